"""Section g of bench.py: a host on a long history (by default 1,000,000 finished tasks and 10,000 active).

The database is written through the host's own Store (`Store.insert`, 50,000 tasks a transaction),
not through the API: a million submissions would measure the submit path, not the history. The
data look like a cluster after a month of use: 20 nodes, 5 users, mostly 1,000-task array batches
(a few single submissions between them), a third of them named "sweep-<i>", 90% completed and the
rest failed, killed or lost, submitted_at increasing; the newest tasks are the active ones, the
oldest of those running on the nodes' cores, the rest pending. The nodes are saved offline, so
the host neither schedules nor times anything out: the database does not change while it is read.

Then a real host is started on it, without runners, and the `--list` and status requests are
timed over one keep-alive connection (the client's own HostConnection): p50/p99 over `samples`
requests each (fewer if a query's time budget runs out), after one uncounted first request whose
time is kept as `cold_ms`. Next to each number is the target from the issue (list p99 <= 50 ms,
status p99 <= 10 ms, host RSS <= 200 MB); nothing is asserted. For every `--list` query the JSON
also holds the SQL the Store ran for it, traced from Store.list_tasks, with its EXPLAIN QUERY PLAN
and its time in-process (`sql_ms`), so a slow query can be told apart from a slow host.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psutil

from hakuriver.core.cores import CoreSet
from hakuriver.core.model import Node, Task
from hakuriver.core.states import NodeState, TaskState
from hakuriver.host.store import Store, TaskFilter
from hakuriver.transport import HostConnection

NODES = [f"node-{i:02d}" for i in range(1, 21)]
NODE_CORES = 64
USERS = ["alice", "bob", "carol", "dave", "erin"]
BATCH = 1000
#: every fifth group of BATCH tasks is single submissions (no batch ID), the rest array batches
SINGLES_EVERY = 5
#: the states of finished tasks, by weight (percent)
FINAL_MIX = {TaskState.COMPLETED: 90, TaskState.FAILED: 6, TaskState.KILLED: 3, TaskState.LOST: 1}
#: the history spans this many seconds, ending now
SPAN = 30 * 86400
WRITE_CHUNK = 50_000
SHARED = "/mnt/cluster/shared/task_outputs"

LIST_TARGET_MS = 50.0
STATUS_TARGET_MS = 10.0
RSS_TARGET_MB = 200.0
#: seconds one query may take in all before its sampling stops short
QUERY_BUDGET = 20.0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def generate(finished: int, active: int, now: float, rng: random.Random) -> Iterator[Task]:
    """`finished` final tasks, then `active` ones (running while cores last, then pending), oldest first."""
    total = finished + active
    step = SPAN / total
    start = now - SPAN
    states, weights = list(FINAL_MIX), list(FINAL_MIX.values())
    used = dict.fromkeys(NODES, 0)  # cores taken by running tasks, per node
    for first in range(0, total, BATCH):
        group = first // BATCH
        batched = group % SINGLES_EVERY != SINGLES_EVERY - 1
        batch_id = _uuid(rng) if batched else ""
        owner = USERS[rng.randrange(len(USERS))]
        named = group % 3 == 0
        cores = rng.choice((1, 1, 1, 2, 4))
        for i in range(first, min(total, first + BATCH)):
            submitted = start + (first if batched else i) * step
            task_id = _uuid(rng)
            task = Task(
                task_id=task_id, command="python", args=["train.py", "--seed", str(i)],
                env={"HAKURIVER_ARRAY_INDEX": str(i - first + 1)} if batched else {"OMP_NUM_THREADS": str(cores)},
                cores=cores, submitted_at=submitted, cwd=f"/home/{owner}/project", batch_id=batch_id,
                name=f"sweep-{i}" if named else "", owner=owner,
            )
            if i < finished:
                _finish(task, rng.choices(states, weights)[0], rng)
            elif (node := NODES[i % len(NODES)]) and used[node] + cores <= NODE_CORES:
                task.state, task.node = TaskState.RUNNING, node
                task.core_ids = tuple(range(used[node], used[node] + cores))
                used[node] += cores
                task.started_at = submitted + 1.0
                task.stdout_path, task.stderr_path = f"{SHARED}/{task_id}.out", f"{SHARED}/{task_id}.err"
            yield task


def _finish(task: Task, state: TaskState, rng: random.Random) -> None:
    task.state, task.node = state, NODES[rng.randrange(len(NODES))]
    task.started_at = task.submitted_at + rng.uniform(0.01, 600)
    task.finished_at = task.started_at + rng.uniform(0.5, 3600)
    task.stdout_path, task.stderr_path = f"{SHARED}/{task.task_id}.out", f"{SHARED}/{task.task_id}.err"
    task.cpu_user_seconds = (task.finished_at - task.started_at) * task.cores * 0.9
    task.cpu_system_seconds = task.cpu_user_seconds * 0.05
    task.max_rss_bytes = rng.randrange(50, 4000) * 2**20
    if state is TaskState.COMPLETED:
        task.exit_code = 0
    elif state is TaskState.FAILED:
        task.exit_code = 1
    elif state is TaskState.KILLED:
        task.signal, task.error = 15, "killed at the user's request"
    else:
        task.error = f"node {task.node} stopped answering (no heartbeat for 30s)"


def write(db: Path, finished: int, active: int) -> dict:
    """Write the history through the Store, WRITE_CHUNK tasks a transaction."""
    store = Store(str(db))
    now = time.time()
    nodes = [Node(n, CoreSet(range(NODE_CORES)), 256 * 2**30, NodeState.OFFLINE, now - 60) for n in NODES]
    insert_seconds, chunk = 0.0, []
    start = time.perf_counter()
    store.save(nodes=nodes)
    for task in generate(finished, active, now, random.Random(20240601)):
        chunk.append(task)
        if len(chunk) == WRITE_CHUNK:
            insert_seconds += _insert(store, chunk)
            chunk = []
    insert_seconds += _insert(store, chunk)
    store.close()
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in db.parent.glob(db.name + "*"))
    return {"tasks": finished + active, "chunk": WRITE_CHUNK, "seconds": seconds, "insert_seconds": insert_seconds,
            "per_second": (finished + active) / seconds, "db_mb": size / 2**20}


def _insert(store: Store, tasks: list[Task]) -> float:
    start = time.perf_counter()
    store.insert(tasks)
    return time.perf_counter() - start


def _pick(db: Path, finished: int, samples: int) -> dict[str, Any]:
    """What to query for: a node, a user, a batch in the middle of the history, and `samples` finished task IDs
    spread over it whose first 8 characters are unique (a short ID must be)."""
    store = Store(str(db))
    reader = store.reader()
    rng = random.Random(7)
    middle = reader.execute("SELECT batch_id FROM tasks WHERE rowid >= ? AND batch_id != '' LIMIT 1",
                            (finished // 2,)).fetchone()[0]
    ids: list[str] = []
    while len(ids) < samples:
        task_id = reader.execute("SELECT task_id FROM tasks WHERE rowid = ?", (rng.randrange(1, finished + 1),)).fetchone()[0]
        if len(store.task_ids_with_prefix(task_id[:8], 2)) == 1 and task_id not in ids:
            ids.append(task_id)
    store.close()
    return {"node": NODES[6], "user": USERS[2], "batch": middle, "task_ids": ids}


def queries(pick: dict[str, Any]) -> dict[str, dict[str, str]]:
    """label -> the `--list` query string (the same keys as GET /api/tasks takes)."""
    return {
        "no filter": {},
        "state=running": {"state": "running"},
        "state=completed": {"state": "completed"},
        "state=failed,killed": {"state": "failed,killed"},
        f"node={pick['node']}": {"node": pick["node"]},
        "batch=<one batch>": {"batch": pick["batch"]},
        "name=sweep-1*": {"name": "sweep-1*"},
        f"user={pick['user']}": {"user": pick["user"]},
        f"state=completed&node={pick['node']}": {"state": "completed", "node": pick["node"]},
    }


def _timed(conn: HostConnection, path: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    body = conn.call("GET", path)
    return time.perf_counter() - start, body


def measure(conn: HostConnection, paths: list[str], samples: int, target_ms: float) -> dict:
    """One uncounted first request, then up to `samples` (cycling through `paths`) within QUERY_BUDGET seconds."""
    cold, body = _timed(conn, paths[0])
    times: list[float] = []
    deadline = time.perf_counter() + QUERY_BUDGET
    while len(times) < samples and time.perf_counter() < deadline:
        times.append(_timed(conn, paths[(len(times) + 1) % len(paths)])[0])
    p99 = percentile(times, 99) * 1000
    return {"path": paths[0], "samples": len(times), "cold_ms": cold * 1000, "p50_ms": percentile(times, 50) * 1000,
            "p99_ms": p99, "target_p99_ms": target_ms, "meets_target": p99 <= target_ms, "reply": json.loads(body)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def sql_of(store: Store, params: dict[str, str]) -> dict:
    """The statements Store.list_tasks runs for this query (traced, values inlined), their plans, the time of
    list_tasks in-process and of each statement alone (medians of 3)."""
    where = TaskFilter(states=tuple(s for s in params.get("state", "").split(",") if s), node=params.get("node", ""),
                       batch_id=params.get("batch", ""), name=params.get("name", ""), owner=params.get("user", ""))
    reader = store.reader()
    statements: list[str] = []
    reader.set_trace_callback(statements.append)
    store.list_tasks(where, 50)
    reader.set_trace_callback(None)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        store.list_tasks(where, 50)
        times.append(time.perf_counter() - start)
    plans = [[row[3] for row in reader.execute(f"EXPLAIN QUERY PLAN {sql}")] for sql in statements]
    each = []
    for sql in statements:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            reader.execute(sql).fetchall()
            runs.append(time.perf_counter() - start)
        each.append(sorted(runs)[1] * 1000)
    return {"sql_ms": sorted(times)[1] * 1000, "sql": statements, "plan": plans, "statement_ms": each}


def history(root: Path, finished: int, active: int, samples: int, start_host: Callable[[Path], Any]) -> dict:
    """The whole section; `start_host(folder)` starts a host on folder/hakuriver.db (bench.Cluster with no runners)."""
    db = root / "hakuriver.db"
    section_start = time.perf_counter()
    result: dict[str, Any] = {"finished_tasks": finished, "active_tasks": active, "nodes": len(NODES),
                              "write": write(db, finished, active)}
    pick = _pick(db, finished, samples)
    start = time.perf_counter()
    cluster = start_host(root)
    result["host_start_seconds"] = time.perf_counter() - start
    lists = queries(pick)
    try:
        host = psutil.Process(cluster.host.pid)
        result["host_rss_mb_at_start"] = host.memory_info().rss / 2**20
        conn = HostConnection(cluster.url, token=cluster.token)
        measured = {label: measure(conn, ["/api/tasks" + (f"?{urlencode(q, quote_via=quote)}" if q else "")],
                                   samples, LIST_TARGET_MS) for label, q in lists.items()}
        ids = pick["task_ids"]
        measured["status: full ID"] = measure(conn, [f"/api/tasks/{i}" for i in ids], samples, STATUS_TARGET_MS)
        measured["status: 8-char prefix"] = measure(conn, [f"/api/tasks/{i[:8]}" for i in ids], samples, STATUS_TARGET_MS)
        conn.close()
        rss = host.memory_info().rss / 2**20
    finally:
        cluster.stop()
    store = Store(str(db))
    for label, m in measured.items():
        reply = m.pop("reply")
        m["matching"] = reply.get("total", 1)
        if label in lists:
            m.update(sql_of(store, lists[label]))
    store.close()
    missed = [label for label, m in measured.items() if not m["meets_target"]] + ([] if rss <= RSS_TARGET_MB else ["host RSS"])
    result.update({"queries": measured, "host_rss_mb": rss, "target_rss_mb": RSS_TARGET_MB, "rss_meets_target": rss <= RSS_TARGET_MB,
                   "missed": missed, "seconds": time.perf_counter() - section_start})
    for f in root.glob("hakuriver.db*"):
        os.remove(f)  # the folder itself goes with the benchmark's temporary folder
    return result


def rows(h: dict) -> list[tuple[str, str]]:
    """Table rows for bench.table()."""
    w = h["write"]
    label = f"history {h['finished_tasks']:,} done + {h['active_tasks']:,} active"
    out = [(f"{label}: written through the Store",
            f"{w['seconds']:.1f} s ({w['per_second']:,.0f} tasks/s, {w['insert_seconds']:.1f} s in insert), DB {w['db_mb']:.0f} MB"),
           (f"{label}: host start-up", f"{h['host_start_seconds']:.2f} s")]
    for name, m in h["queries"].items():
        kind = "" if name.startswith("status") else "list "
        miss = "" if m["meets_target"] else "  MISSES TARGET"
        out.append((f"{label}: {kind}{name} p50 / p99",
                    f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} ms (target p99 <= {m['target_p99_ms']:.0f}; {m['matching']:,} match){miss}"))
    miss = "" if h["rss_meets_target"] else "  MISSES TARGET"
    out.append((f"{label}: host RSS after the queries", f"{h['host_rss_mb']:.0f} MB (target <= {h['target_rss_mb']:.0f}){miss}"))
    out.append((f"{label}: whole section", f"{h['seconds']:.0f} s"))
    return out
