"""Section h. of the benchmark: what open dashboards cost the host, and how fast they see a change.

Each dashboard page keeps one `GET /api/events` stream open. Here `watchers` such streams are
held open by one thread (plain sockets and a selector: what 100 browsers cost the host, not
what 100 Python HTTP clients cost this process), and the same bulk batch is run with none and
with all of them open, alternately: the host's CPU seconds for the batch and its throughput.
Then one watcher times how long a task takes to show on a node's cores: from the runner's
start report (the task's started_at in the database) to the first event that shows it.
"""

from __future__ import annotations

import selectors
import socket
import sqlite3
import statistics
import threading
import time
from typing import Any

import psutil

from hakuriver import protocol as p


class Watchers:
    """`n` open event streams, read and thrown away by one thread, until `close`."""

    def __init__(self, port: int, token: str, n: int) -> None:
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.bytes = 0
        request = (f"GET {p.EVENTS} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {p.TOKEN_COOKIE}={token}\r\n"
                   "Accept: text/event-stream\r\n\r\n").encode()
        self._socks = []
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            self._socks.append(sock)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.2):
                try:
                    self.bytes += len(key.fileobj.recv(65536))  # type: ignore[union-attr]
                except BlockingIOError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self._socks:
            sock.close()


def _host_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def cost(cluster: Any, watchers: int, tasks: int, rounds: int, bulk_round: Any) -> dict:
    """The host's CPU seconds and the throughput of `tasks`-task batches, without and with `watchers` open."""
    runs: dict[str, list[tuple[float, float]]] = {"none": [], "open": []}
    for _ in range(rounds):
        for label in ("none", "open"):
            streams = Watchers(cluster.port, cluster.token, watchers) if label == "open" else None
            try:
                time.sleep(0.5)  # the streams connected and got their first snapshot
                before = _host_cpu(cluster.host.pid)
                seconds = bulk_round(cluster, tasks)["seconds"]
                runs[label].append((_host_cpu(cluster.host.pid) - before, tasks / seconds))
            finally:
                if streams is not None:
                    streams.close()
    out: dict[str, Any] = {"watchers": watchers, "tasks": tasks, "rounds": rounds}
    for label, values in runs.items():
        out[f"host_cpu_seconds_{label}"] = statistics.median(v[0] for v in values)
        out[f"per_second_{label}"] = statistics.median(v[1] for v in values)
    out["host_cpu_ms_per_watcher_second"] = _per_watcher_second(out, watchers, tasks)
    return out


def _per_watcher_second(out: dict, watchers: int, tasks: int) -> float:
    """Extra host CPU per open stream per second of the run, in ms."""
    extra = out["host_cpu_seconds_open"] - out["host_cpu_seconds_none"]
    seconds = tasks / out["per_second_open"]
    return max(0.0, extra) / watchers / seconds * 1000


def live_latency(cluster: Any, samples: int) -> dict:
    """Seconds from a task's start report to the first cluster event showing it on its cores."""
    delays = []
    client = cluster.api()
    sock = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
    sock.sendall((f"GET {p.EVENTS} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {p.TOKEN_COOKIE}={cluster.token}\r\n"
                  "\r\n").encode())
    reader = sock.makefile("rb")
    try:
        for _ in range(samples):
            task_id = client.submit([p.TaskSpec("sleep", ["2"])]).task_ids[0]
            seen = _first_event_holding(reader, task_id, deadline=time.monotonic() + 20)
            started = _started_at(cluster, task_id)
            delays.append(max(0.0, seen - started))
            client.kill(task_id)
    finally:
        reader.close()
        sock.close()
    return {"samples": samples, "median_ms": statistics.median(delays) * 1000, "max_ms": max(delays) * 1000}


def _first_event_holding(reader: Any, task_id: str, deadline: float) -> float:
    while time.monotonic() < deadline:
        line = reader.readline()
        if line.startswith(b"data: {\"now\"") and task_id.encode() in line:
            return time.time()
    raise SystemExit(f"bench: task {task_id} never showed on the dashboard's events")


def _started_at(cluster: Any, task_id: str) -> float:
    for _ in range(200):
        db = sqlite3.connect(f"file:{cluster.root / 'hakuriver.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT started_at FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        finally:
            db.close()
        if row and row[0] is not None:
            return row[0]
        time.sleep(0.05)
    raise SystemExit(f"bench: task {task_id} never started")


def rows(r: dict) -> list[tuple[str, str]]:
    c, lat = r["cost"], r["latency"]
    return [
        (f"{c['watchers']} open dashboards, {c['tasks']}-task batch: host CPU",
         f"{c['host_cpu_seconds_none']:.2f} s without, {c['host_cpu_seconds_open']:.2f} s with "
         f"({c['host_cpu_ms_per_watcher_second']:.2f} ms per dashboard per second)"),
        (f"{c['watchers']} open dashboards: bulk throughput", f"{c['per_second_none']:.0f} /s without, "
                                                             f"{c['per_second_open']:.0f} /s with"),
        ("dashboard: task start to its cores shown, median / max", f"{lat['median_ms']:.0f} / {lat['max_ms']:.0f} ms"),
    ]


