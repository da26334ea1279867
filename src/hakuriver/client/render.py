"""Every string a person reads: the node table, the task record, the final-state line. Pure."""

from __future__ import annotations

import shlex
import time

from hakuriver import protocol as p


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def _ago(ts: float, now: float) -> str:
    if ts <= 0:
        return "never"
    return f"{max(0.0, now - ts):.1f}s ago"


def _memory(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "-"


def node_table(nodes: list[p.NodeView], now: float) -> str:
    if not nodes:
        return "No nodes have registered yet. Start hakuriver.runner on a compute node."
    headers = ("NODE", "STATE", "CORES", "FREE", "RUNNING", "MEMORY", "LAST HEARTBEAT")
    rows = [
        (n.name, n.state, str(n.total_cores), str(n.free_cores), str(n.running_tasks), _memory(n.memory_bytes),
         _ago(n.last_heartbeat, now))
        for n in nodes
    ]
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (headers, *rows)]
    return "\n".join(lines)


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


def final_line(t: p.TaskView) -> str:
    where = f" on {t.node}" if t.node else ""
    took = ""
    if t.started_at is not None and t.finished_at is not None:
        took = f" after {t.finished_at - t.started_at:.2f}s"
    return f"task {t.task_id} {outcome(t)}{where}{took}"


def task_record(t: p.TaskView) -> str:
    fields = [
        ("Task ID", t.task_id),
        ("State", t.state + (" (kill requested)" if t.kill_requested and not _final(t.state) else "")),
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
        ("Stdout", t.stdout_path or "-"),
        ("Stderr", t.stderr_path or "-"),
        ("Working dir", t.cwd or "-"),
        ("Environment", " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(t.env.items())) or "-"),
    ]
    if t.batch_id:
        fields.append(("Batch", t.batch_id))
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in fields)


def _final(state: str) -> bool:
    return state in ("completed", "failed", "killed", "lost")


STATE_ORDER = ("pending", "assigning", "running", "completed", "failed", "killed", "lost")


def counts_line(view: p.BatchView) -> str:
    """'1000 tasks: 10 pending, 8 running, 980 completed, 2 failed'"""
    parts = [f"{view.counts[s]} {s}" for s in STATE_ORDER if view.counts.get(s)]
    return f"{view.total} tasks: " + ", ".join(parts)


def batch_summary(view: p.BatchView) -> str:
    lines = [f"Batch {view.batch_id} {'finished' if view.done else 'in progress'}", counts_line(view)]
    for brief in view.problems:
        code = "" if brief.exit_code is None else f" exit code {brief.exit_code}"
        lines.append(f"  {brief.task_id} {brief.state}{code}{': ' + brief.error if brief.error else ''}")
    if len(view.problems) < sum(view.counts.get(s, 0) for s in ("failed", "killed", "lost")):
        lines.append("  ... (first 20 shown; see --status on a task ID)")
    return "\n".join(lines)
