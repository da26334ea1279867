"""The host's event loop never waits on a big query or a big file (issue 9, item 10).

A million finished tasks in the database, whole-table `--list` queries and a gigabyte log
stream at once, while a runner heartbeats at its interval: no node goes offline, and every
heartbeat's round trip stays well under the heartbeat timeout.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

from hakuriver import protocol as p
from hakuriver.host.store import Store
from hakuriver.transport import HostConnection
from support import program, wait_until

ROWS = 1_000_000
INTERVAL, FACTOR = 0.5, 4  # a node is offline after 2 s without a heartbeat
LOAD_SECONDS = 8.0


def _million_finished_tasks(path: str) -> None:
    """Written by SQLite itself (seconds, not minutes) into the schema the store made."""
    Store(path).close()
    db = sqlite3.connect(path)
    db.executescript(f"""
        BEGIN;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
        INSERT INTO tasks (task_id, state, command, args, env, cores, node, core_ids, exit_code,
                           submitted_at, started_at, finished_at, name, owner)
        SELECT printf('%08x-0000-4000-8000-%012x', i, i), CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END,
               'true', '[]', '{{}}', 1, 'old' || (i % 20), '0', i % 10 = 0, 1e9 + i, 1e9 + i, 1e9 + i + 1,
               'task-' || i, 'user' || (i % 5)
        FROM n;
        COMMIT;
    """)
    db.close()


def _heartbeats(url: str, key: str, stop: threading.Event, times: list[float]) -> None:
    """A second node's runner, played here: one heartbeat per interval, each round trip timed."""
    conn = HostConnection(url, timeout=30, token=key)
    body = p.encode(p.Heartbeat(node=p.NodeInfo("probe", [0]), wait=0.0))
    while not stop.wait(INTERVAL):
        start = time.monotonic()
        conn.call("POST", p.RUNNER_HEARTBEAT, body)
        times.append(time.monotonic() - start)


def _lists(url: str, token: str, stop: threading.Event, counts: list[int]) -> None:
    """Queries that each read the whole table: counts over every row, a pattern no index helps, a long stream."""
    conn = HostConnection(url, timeout=60, token=token)
    queries = ["", "state=completed", "name=%2A7", "state=failed&limit=0"]
    while not stop.is_set():
        for query in queries:
            _, pieces = conn.stream(f"{p.TASKS}?{query}")
            counts.append(sum(len(piece) for piece in pieces))


def test_big_queries_and_files_do_not_delay_heartbeats(fresh_cluster):
    cluster = fresh_cluster
    assert cluster.base["timing"]["heartbeat_interval"] == INTERVAL  # the test cluster's defaults
    assert cluster.base["timing"]["heartbeat_timeout_factor"] == FACTOR
    cluster.db_file.parent.mkdir(parents=True)
    _million_finished_tasks(str(cluster.db_file))
    cluster.start_host()
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    big_log = cluster.submit("--wait", "--", sys.executable, "-c", "import os; os.ftruncate(1, 10**9)")

    stop_load, stop_probe, times, listed = threading.Event(), threading.Event(), [], []
    probe = threading.Thread(target=_heartbeats, args=(cluster.url, cluster.cluster_key, stop_probe, times))
    lister = threading.Thread(target=_lists, args=(cluster.url, cluster.token, stop_load, listed))
    probe.start()
    lister.start()
    argv = program("client") + ["--config", str(cluster.config), "--logs", big_log]
    log_bytes = 0
    deadline = time.monotonic() + LOAD_SECONDS
    try:
        while time.monotonic() < deadline:  # the gigabyte log, again and again
            reader = subprocess.Popen(argv, stdout=subprocess.PIPE)
            while piece := reader.stdout.read(4 << 20):
                log_bytes += len(piece)
            assert reader.wait(60) == 0
        stop_load.set()
        lister.join(90)
        # checked while the probe still heartbeats: the nodes stayed online through the load
        node_states = {r["name"]: r["state"] for r in cluster.query("SELECT name, state FROM nodes")}
    finally:
        stop_load.set()
        stop_probe.set()
        lister.join(90)
        probe.join(90)

    timeout = INTERVAL * FACTOR
    assert log_bytes >= 10**9 and len(listed) >= 4, (log_bytes, listed)
    assert len(times) >= LOAD_SECONDS / INTERVAL / 2, times
    assert max(times) < timeout / 2, f"slowest heartbeat round trip {max(times):.3f}s (timeout {timeout}s)"
    assert node_states == {"a": "online", "probe": "online"}
    assert "is offline" not in (cluster.root / "host.log").read_text()
    wait_until(lambda: cluster.client("--list-nodes").returncode == 0, 10, "the host to answer")
