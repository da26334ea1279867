"""Every string a person reads: the node table, the task record, the final-state line. Pure."""

from __future__ import annotations

import math
import shlex
import time

from hakuriver import protocol as p
from hakuriver.durations import format_duration


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def _ago(ts: float, now: float) -> str:
    if ts <= 0:
        return "never"
    return f"{max(0.0, now - ts):.1f}s ago"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    """'0.42s', '12.3s', '4m05s', '2h03m', '3d04h'."""
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (headers, *rows))


def node_table(nodes: list[p.NodeView], now: float) -> str:
    if not nodes:
        return "No nodes have registered yet. Start hakuriver.runner on a compute node."
    headers = ("NODE", "STATE", "CORES", "FREE", "RUNNING", "MEMORY", "LAST HEARTBEAT")
    rows = [
        (n.name, "leaving" if n.leaving else n.state, str(n.total_cores), str(n.free_cores), str(n.running_tasks),
         _bytes(n.memory_bytes) if n.memory_bytes else "-", _ago(n.last_heartbeat, now))
        for n in nodes
    ]
    return _table(headers, rows)


def _exit(t: p.TaskView) -> str:
    if t.exit_code is not None:
        return str(t.exit_code)
    return f"sig {t.signal}" if t.signal is not None else "-"


def _runtime(t: p.TaskView, now: float) -> str:
    if t.started_at is None:
        return "-"
    return _duration(max(0.0, (t.finished_at if t.finished_at is not None else now) - t.started_at))


def _matches(page: p.TaskList) -> str:
    return f"{page.total} matching tasks" if page.total_exact else f"more than {page.total:,} matching tasks"


def task_table(page: p.TaskList, now: float) -> str:
    """--list: one line per task, newest first, and a footer when the limit cut the list."""
    if not page.tasks:
        return "No tasks match." if page.total == 0 else f"No tasks on this page ({_matches(page)} in all)."
    headers = ("ID", "NAME", "STATE", "NODE", "CORES", "EXIT", "SUBMITTED", "RUNTIME")
    rows = [
        (t.task_id[:8], t.name or "-", t.state, t.node or "-", str(t.cores), _exit(t),
         time.strftime("%m-%d %H:%M:%S", time.localtime(t.submitted_at)), _runtime(t, now))
        for t in page.tasks
    ]
    text = _table(headers, rows)
    if page.offset + len(page.tasks) < page.total or not page.total_exact:
        text += f"\n({len(page.tasks)} of {_matches(page)} shown; --limit N for more, --limit 0 for all)"
    return text


def command_line(t: p.TaskView) -> str:
    return shlex.join([t.command, *t.args])


def outcome(t: p.TaskView) -> str:
    """'completed (exit code 0)', 'failed (exit code 3)', 'killed', ..."""
    parts = []
    if t.exit_code is not None:
        parts.append(f"exit code {t.exit_code}")
    if t.error:
        parts.append(t.error)
    return t.state + (f" ({'; '.join(parts)})" if parts else "")


def count(n: int, noun: str) -> str:
    """'1 task', '3 tasks'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def final_line(t: p.TaskView) -> str:
    where = f" on {t.node}" if t.node else ""
    took = ""
    if t.started_at is not None and t.finished_at is not None:
        took = f" after {t.finished_at - t.started_at:.2f}s"
    return f"task {t.task_id} {outcome(t)}{where}{took}"


def usage_lines(t: p.TaskView) -> list[tuple[str, str]]:
    """CPU time, peak memory, and CPU efficiency with a right-sizing hint (what Slurm's seff shows)."""
    if t.cpu_user_seconds is None or t.cpu_system_seconds is None:
        return [("Usage", "-" if not _final(t.state) else "not measured")]
    cpu = t.cpu_user_seconds + t.cpu_system_seconds
    lines = [("CPU time", f"{_duration(cpu)} ({t.cpu_user_seconds:.2f}s user, {t.cpu_system_seconds:.2f}s system)")]
    if t.max_rss_bytes is not None:
        lines.append(("Peak memory", _bytes(t.max_rss_bytes)))
    if t.started_at is not None and t.finished_at is not None and t.finished_at > t.started_at:
        wall = t.finished_at - t.started_at
        efficiency = cpu / (wall * t.cores)
        used = cpu / wall
        text = f"{efficiency:.0%} (used {used:.1f} of {t.cores} cores on average over {_duration(wall)})"
        if efficiency < 0.5 and t.cores > 1:
            # the hint agrees with the average shown: 1.004 cores "used 1.0" is one core, not two
            text += f"; --cores {max(1, math.ceil(round(used, 1)))} would do"
        lines.append(("CPU efficiency", text))
    return lines


def task_record(t: p.TaskView, now: float | None = None) -> str:
    fields = [
        ("Task ID", t.task_id),
        ("Name", t.name or "-"),
        ("Owner", t.owner or "-"),
        # the account its current attempt ran as on its node: the owner's on a root runner, else the runner's
        *([("Unix user", t.unix_user)] if t.unix_user else []),
        ("State", t.state + (" (kill requested)" if t.kill_requested and not _final(t.state) else "")),
        *([("Waiting", t.pending_reason)] if t.pending_reason else []),
        ("Command", command_line(t)),
        ("Cores", str(t.cores)),
        ("Node", t.node or (f"(waiting; asked for {t.target_node})" if t.target_node else "-")),
        ("Core IDs", ",".join(str(c) for c in t.core_ids) or "-"),
        ("Exit code", "-" if t.exit_code is None else str(t.exit_code)),
        ("Signal", "-" if t.signal is None else str(t.signal)),
        ("Error", t.error or "-"),
        ("Submitted", _when(t.submitted_at)),
        ("Started", _when(t.started_at)),
        ("Finished", _when(t.finished_at)),
        ("Runtime", _runtime(t, time.time() if now is None else now)),
        *usage_lines(t),
        ("Stdout", t.stdout_path or "-"),
        ("Stderr", t.stderr_path or "-"),
        ("Working dir", t.cwd or "-"),
        ("Environment", " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(t.env.items())) or "-"),
        ("Time limit", "-" if t.time_limit is None else format_duration(t.time_limit)),
        ("Retries", f"{t.retries} (this is attempt {t.attempt} of at most {t.retries + 1})" if t.retries else "0"),
    ]
    if t.after:
        fields.append(("After", ", ".join(t.after)))
    if t.batch_id:
        fields.append(("Batch", t.batch_id + (f" (at most {t.throttle} running at once)" if t.throttle else "")))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k + ':':<{width + 1}} {v}" for k, v in fields]
    if len(t.attempts) > 1:
        lines += [f"Attempts ({len(t.attempts)}):", *(attempt_line(a) for a in t.attempts)]
    return "\n".join(lines)


def attempt_line(a: p.AttemptView) -> str:
    """'  #2 failed on node-a (cores 0,1) as alice, exit code 3, 1.2s; /shared/task_outputs/<id>.2.out'"""
    where = f" on {a.node} (cores {','.join(str(c) for c in a.core_ids)})" if a.node else ""
    where += f" as {a.unix_user}" if a.unix_user else ""
    how = f", exit code {a.exit_code}" if a.exit_code else (f", signal {a.signal}" if a.signal else "")
    took = f", {a.finished_at - a.started_at:.1f}s" if a.started_at and a.finished_at else ""
    why = f": {a.error}" if a.error else ""
    out = f"; {a.stdout_path}" if a.stdout_path else ""
    return f"  #{a.attempt} {a.state}{where}{how}{took}{why}{out}"


def _final(state: str) -> bool:
    return state in p.FINAL_STATES


def counts_line(view: p.BatchView) -> str:
    """'1000 tasks: 10 pending, 8 running, 980 completed, 2 failed'"""
    parts = [f"{view.counts[s]} {s}" for s in p.STATES if view.counts.get(s)]
    return f"{view.total} tasks: " + ", ".join(parts)


def batch_summary(view: p.BatchView) -> str:
    lines = [f"Batch {view.batch_id} {'finished' if view.done else 'in progress'}", counts_line(view)]
    for brief in view.problems:
        code = "" if brief.exit_code is None else f" exit code {brief.exit_code}"
        label = brief.name or (f"index {brief.array_index}" if brief.array_index is not None else "")
        label = f" ({label})" if label else ""
        lines.append(f"  {brief.task_id}{label} {brief.state}{code}{': ' + brief.error if brief.error else ''}")
    if len(view.problems) < sum(view.counts.get(s, 0) for s in p.PROBLEM_STATES):
        every = f"--list --batch {view.batch_id[:8]} --state {','.join(p.PROBLEM_STATES)} --limit 0"
        lines.append(f"  ... (the first {len(view.problems)} shown; {every} lists them all)")
    return "\n".join(lines)
