#!/usr/bin/env python3
"""Scale of the host (issue 13, item 4): one real host, 1,000 simulated nodes, a long queue, a long history.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--json out.json] [--dir FOLDER]

Full size: 1,000 nodes x 64 cores, 100,000 tasks queued, 1,000,000 in the history; --quick: 20 x 4,
500, 2,000 (seconds). What it does, and what it measures:

  1. writes a database of `history` finished tasks through the host's own Store (bench_history.write)
     and starts a real `hakuriver.host` on it, with the default timing (heartbeat every 5 s);
  2. load generators, separate processes (asyncio on raw keep-alive sockets, at most 500 nodes
     each), simulate `nodes` runners of `cores` cores the way hakuriver.runner talks: a heartbeat
     long-poll (wait = 5 s) sent again as soon as it is answered, launch orders reported started at
     once, never finished, so cores fill. They count the heartbeats answered, how late past its 5 s
     the host answered an idle long-poll, which share of them fell in the busiest tenth of the 5 s
     cycle (10% when the nodes are spread out; a placement burst puts them in step), their own
     event-loop lag, how soon they sent the next heartbeat after an answer, and their CPU: the table
     says whether the generators kept up, and the achieved heartbeat rate next to nodes/5 per second;
  3. placement: every node online and idle, nodes x cores one-core tasks in one batch, timed from
     the submit to the last launch order received and to the last start report acknowledged (us
     per placement, and the host's CPU per placement); the same at nodes/10 nodes (a second host on
     a copy of the database), and the scheduler alone (core.Cluster.schedule, in this process) at
     both sizes, so the growth of the cost per placement can be set against that of the node count;
  4. with every core taken: host CPU and RSS over two quiet heartbeat intervals; then p50/p99 over
     `samples` requests each (interleaved, back to back) of submit (1 task), status (of a running, a
     pending and a finished task), --list (GET /api/tasks, default page) and the node list (GET
     /api/nodes), then a few 10,000-task batch submits (each part with the host's CPU and RSS);
  5. the queue topped up to `queued` pending tasks, and 4. again. The RSS held against the target is
     the one with every core taken and `queued` tasks waiting, before that round's batches.

The targets of the issue are printed next to the numbers, never asserted: p99 <= 50 ms for single
requests, host RSS <= 300 MB, the cost per placement growing no faster than the node count.

This file holds the phases, the result, the table and main; the simulated runners are in
bench_scale_load.py, the host under test and the probes on it in bench_scale_probe.py.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_history  # next to this file (the script's folder is on sys.path)
from bench_cluster import emit, filesystem
from bench_scale_load import INTERVAL, raise_fd_limit
from bench_scale_probe import ROUND_BUDGET, Run, placement, running, scheduler_alone, single_requests, submit_batches, summary, window

from hakuriver import protocol as p

SINGLE_TARGET_MS = 50.0
RSS_TARGET_MB = 300.0
BATCH = 10_000
SIZES = {
    "full": {"nodes": 1000, "cores": 64, "queued": 100_000, "history": 1_000_000, "samples": 300},
    "quick": {"nodes": 20, "cores": 4, "queued": 500, "history": 2_000, "samples": 20},
}


# ---- the rounds of requests --------------------------------------------------------------------
def one_round(run: Run, finished_ids: list[str], samples: int, batch: tuple[bytes, int, int]) -> dict:
    """The single requests (each window of its own), then the batch submits, which make the queue longer."""
    queued = run.queued
    times, singles = window(run, lambda: single_requests(run, finished_ids, samples))
    requests = {name: summary(values, SINGLE_TARGET_MS) for name, values in times.items()}
    rss_peak = run.rss.peak_mb  # with the queue as long as it was for the single requests
    times, batches = window(run, lambda: submit_batches(run, *batch))
    requests[f"submit {batch[1]:,}-task batch"] = summary(times, None)
    return {"queued_at_start": queued, "queued_at_end": run.queued, "requests": requests, "singles": singles,
            "batches": batches, "host_rss_peak_mb_after_singles": rss_peak}


def top_up(run: Run, body: bytes, size: int, want: int) -> dict:
    """Batches of `size` until `want` tasks wait."""
    times: list[float] = []
    deadline = time.monotonic() + ROUND_BUDGET
    while run.queued < want and time.monotonic() < deadline:
        seconds, raw = run.call("POST", p.TASKS, body)
        times.append(seconds)
        run.pending_ids.append(p.decode(raw, p.SubmitReply).task_ids[-1])
        run.queued += size
    return {"batches": len(times), "batch": size, "seconds": sum(times), "queued": run.queued,
            "per_batch_median_ms": statistics.median(times) * 1000 if times else float("nan")}


# ---- the section --------------------------------------------------------------------------------
def history_ids(db: Path, n: int) -> list[str]:
    """`n` finished tasks spread over the history, for status requests."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        total = con.execute("SELECT max(rowid) FROM tasks").fetchone()[0] or 0
        rng = random.Random(13)
        rows = [con.execute("SELECT task_id FROM tasks WHERE rowid = ?", (rng.randint(1, total),)).fetchone()
                for _ in range(n if total else 0)]
    finally:
        con.close()
    return [r[0] for r in rows if r]


def copy_db(db: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in db.parent.glob(db.name + "*"):
        shutil.copyfile(f, folder / f.name)
    return folder / db.name


def remove_db(db: Path) -> None:
    for f in db.parent.glob(db.name + "*"):
        f.unlink()


def small_placement(root: Path, db: Path, nodes: int, cores: int, seconds: float) -> dict:
    """The placement on `nodes` idle nodes, by a second host on a copy of the same database."""
    copy = copy_db(db, root / "small")
    try:
        with running(root / "small", copy, nodes, cores) as run:
            _, idle = window(run, seconds=seconds)
            return {**placement(run), "idle": idle, "host_rss_peak_mb": run.rss.peak_mb}
    finally:
        remove_db(copy)


def big_run(root: Path, db: Path, nodes: int, cores: int, queued: int, samples: int, seconds: float) -> dict:
    """Idle nodes, the placement, the cores full, then the two rounds of requests around the top-up."""
    finished_ids = history_ids(db, max(1, samples))
    size = min(BATCH, max(1, queued))
    batch = (p.encode(p.SubmitRequest([p.TaskSpec("/bin/true")] * size, batch=True)), size, max(2, min(10, samples // 50)))
    with running(root / "host", db, nodes, cores) as run:
        _, idle = window(run, seconds=seconds)
        placed = {**placement(run), "idle": idle}
        _, full = window(run, seconds=seconds)
        first = one_round(run, finished_ids, samples, batch)
        topped = top_up(run, batch[0], size, queued)
        second = one_round(run, finished_ids, samples, batch)
        return {"placement": placed, "cores_full": full, "rounds": [first, second], "top_up": topped,
                "host_rss_peak_mb": run.rss.peak_mb, "host_rss_end_mb": run.rss_mb(),
                # the state of the issue: every core taken and `queued` tasks waiting (the last batches came after)
                "host_rss_mb_at_target_state": second["host_rss_peak_mb_after_singles"]}


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def verdicts(r: dict) -> dict:
    missed = [f"{rd['queued_at_start']:,} queued: {name} p99" for rd in r["rounds"] for name, m in rd["requests"].items()
              if m.get("meets_target") is False]
    if r["host_rss_mb_at_target_state"] > RSS_TARGET_MB:
        missed.append("host RSS")
    small, big = r["placement"]
    alone_small, alone_big = r["scheduler_alone"]
    growth = {"nodes": big["nodes"] / small["nodes"],
              "host_end_to_end": ratio(big["us_per_placement"], small["us_per_placement"]),
              "host_cpu": ratio(big["host_cpu_us_per_placement"], small["host_cpu_us_per_placement"]),
              "scheduler_alone": ratio(alone_big["us_per_placement"], alone_small["us_per_placement"])}
    # nan (a cost too small to measure) counts as met: nan <= x is false, so test for more instead
    growth["meets_target"] = not any(growth[k] > growth["nodes"] for k in ("host_end_to_end", "host_cpu", "scheduler_alone"))
    if not growth["meets_target"]:
        missed.append("cost per placement grows faster than the node count")
    windows = [small["idle"], big["idle"], r["cores_full"], *(rd[k] for rd in r["rounds"] for k in ("singles", "batches"))]
    return {"placement_growth": growth, "generator_kept_up": all(w["generator_kept_up"] for w in windows),
            "target_p99_ms": SINGLE_TARGET_MS, "target_rss_mb": RSS_TARGET_MB, "missed": missed}


def scale(root: Path, nodes: int, cores: int, queued: int, history: int, samples: int) -> dict:
    """The whole section in `root` (made if missing; its database files are removed at the end)."""
    began = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    seconds = 2 * INTERVAL if samples >= 100 else INTERVAL  # the quiet windows: at least one heartbeat each
    db = root / "hakuriver.db"
    result: dict[str, Any] = {"nodes": nodes, "cores": cores, "queued": queued, "history": history, "samples": samples,
                              "heartbeat_interval": INTERVAL, "folder": str(root), "filesystem": filesystem(str(root))}
    try:
        result["write"] = bench_history.write(db, history, 0)
        small = small_placement(root, db, max(1, nodes // 10), cores, seconds)
        big = big_run(root, db, nodes, cores, queued, samples, seconds)
    finally:
        remove_db(db)
    result["placement"] = [small, big.pop("placement")]
    result.update(big)
    result["scheduler_alone"] = [scheduler_alone(n, cores) for n in (max(1, nodes // 10), nodes)]
    result.update(verdicts(result))
    result["seconds"] = time.perf_counter() - began
    return _no_nan(result)


def _no_nan(value: Any) -> Any:
    """nan (nothing to measure in a window: no heartbeat answered in it, say) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


# ---- the table ----------------------------------------------------------------------------------
def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0%}"


def _heartbeat_rows(label: str, w: dict) -> list[tuple[str, str]]:
    kept = "kept up" if w["generator_kept_up"] else "DID NOT KEEP UP"
    errors = f"; {w['errors']} heartbeat errors ({w['last_error']})" if w["errors"] else ""
    return [(f"{label}: host CPU, RSS; heartbeats achieved / expected",
             f"{w['host_cpu_percent']:.0f}%, {w['host_rss_mb']:.0f} MB; {_n(w['heartbeats_per_s'], 1)} / "
             f"{w['expected_per_s']:.1f} per s, idle long-polls answered {_n(w['late_p50_ms'])} / {_n(w['late_p99_ms'])} "
             f"ms late (p50/p99, max {_n(w['late_max_ms'])}), busiest tenth of the cycle {_pct(w['busiest_phase_share'])} "
             f"of them{errors}"),
            (f"{label}: generators ({w['generator_processes']} processes)",
             f"loop lag p99 {_n(w['generator_lag_p99_ms'], 1)} ms, next heartbeat after an answer p99 "
             f"{_n(w['generator_resend_p99_ms'], 1)} ms, CPU {w['generator_cpu_percent']:.0f}% ({kept})")]


def _placement_rows(head: str, pl: dict) -> list[tuple[str, str]]:
    done = "" if pl["complete"] else f"  INCOMPLETE: {pl['placed']:,} placed"
    if pl["heartbeat_errors"]:  # e.g. a long-poll unanswered past the runner's own timeout (2 x interval + 2 s)
        done += f"; {pl['heartbeat_errors']:,} heartbeats failed meanwhile ({pl['last_error']})"
    if pl["overbooked"]:
        done += f"; {pl['overbooked']:,} times a node was given more tasks than cores  WRONG"
    label = f"{head}: placement of {pl['tasks']:,} tasks on {pl['nodes']:,} idle nodes"
    return [(label, f"{pl['all_launched_seconds']:.1f} s to all launched, {pl['all_started_seconds']:.1f} s to all started "
                    f"({pl['us_per_placement']:.0f} us/placement; host CPU {pl['host_cpu_us_per_placement']:.0f} us/placement; "
                    f"submit {pl['submit_seconds']:.2f} s){done}")]


def _round_rows(head: str, rd: dict) -> list[tuple[str, str]]:
    label = f"{head}, {rd['queued_at_start']:,} queued"
    out = []
    for name, m in rd["requests"].items():
        target = f"target p99 <= {m['target_p99_ms']:.0f}" if m["target_p99_ms"] else "no target"
        miss = "  MISSES TARGET" if m.get("meets_target") is False else ""
        out.append((f"{label}: {name} p50 / p99", f"{_n(m['p50_ms'], 1)} / {_n(m['p99_ms'], 1)} ms (max {_n(m['max_ms'])}; "
                                                 f"{target}; {m['samples']} samples){miss}"))
    out += _heartbeat_rows(f"{label}, during the single requests", rd["singles"])
    out += _heartbeat_rows(f"{label}, during the batch submits", rd["batches"])
    return out


def rows(r: dict) -> list[tuple[str, str]]:
    """Table rows for bench.table()."""
    w, g = r["write"], r["placement_growth"]
    head = f"scale {r['nodes']:,}x{r['cores']}"
    out = [(f"{head}: history of {r['history']:,} written through the Store", f"{w['seconds']:.1f} s, DB {w['db_mb']:.0f} MB")]
    for pl in r["placement"]:
        out += _heartbeat_rows(f"{head}: {pl['nodes']:,} idle nodes", pl["idle"]) + _placement_rows(head, pl)
    small, big = (a["us_per_placement"] for a in r["scheduler_alone"])
    out.append((f"{head}: scheduler alone (core.Cluster.schedule), {r['placement'][0]['nodes']:,} / {r['nodes']:,} nodes",
                f"{small:.1f} / {big:.1f} us per placement"))
    out.append((f"{head}: growth of cost per placement, x{g['nodes']:.0f} nodes",
                f"end to end x{_n(g['host_end_to_end'], 1)}, host CPU x{_n(g['host_cpu'], 1)}, scheduler alone "
                f"x{_n(g['scheduler_alone'], 1)} (target: <= x{g['nodes']:.0f}){'' if g['meets_target'] else '  MISSES TARGET'}"))
    out += _heartbeat_rows(f"{head}: every core taken, no requests", r["cores_full"])
    t = r["top_up"]
    for rd in r["rounds"]:
        out += _round_rows(head, rd)
        if rd is r["rounds"][0]:
            out.append((f"{head}: top-up to {t['queued']:,} queued", f"{t['batches']} batches of {t['batch']:,} in {t['seconds']:.1f} s"))
    miss = "" if r["host_rss_mb_at_target_state"] <= RSS_TARGET_MB else "  MISSES TARGET"
    busy = r["nodes"] * r["cores"]
    out.append((f"{head}: host RSS, {busy:,} running + {r['rounds'][1]['queued_at_start']:,} queued",
                f"{r['host_rss_mb_at_target_state']:.0f} MB (target <= {RSS_TARGET_MB:.0f}){miss}; "
                f"peak {r['host_rss_peak_mb']:.0f} MB with {r['rounds'][1]['queued_at_end']:,} queued"))
    out.append((f"{head}: whole section", f"{r['seconds']:.0f} s on {r['filesystem']}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs (seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON document here")
    parser.add_argument("--dir", metavar="FOLDER", help="make the temporary folder here (default: the system's temp folder)")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory(prefix="hakuriver-scale-", dir=args.dir) as tmp:
        result = scale(Path(tmp), **size)
    width = max(len(k) for k, _ in rows(result))
    emit("\n".join(f"  {k:<{width}}  {v}" for k, v in rows(result)), result, args.json)


if __name__ == "__main__":
    main()
