"""The host under test of bench_scale.py, and the probes on it: a real hakuriver.host with the
simulated nodes of bench_scale_load.py, a user's keep-alive connection timing its requests, the
host's CPU and RSS (its peak sampled on a thread), how the heartbeats went over a window, the
placement of one batch filling every core, and the scheduler alone for comparison.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_cluster import free_port, percentile, program, wait_for
from bench_scale_load import INTERVAL, Generators, end_process
import psutil

from hakuriver import protocol as p
from hakuriver.transport import HostConnection

#: seconds: sampling one round, waiting for a placement, for nodes to come online
ROUND_BUDGET = 180.0
PLACE_BUDGET = 600.0
ONLINE_BUDGET = 60.0


# ---- the host and a user's connection to it -----------------------------------------------------
class Host:
    """A real hakuriver.host on `db`; its config, credentials and log in `folder`."""

    def __init__(self, folder: Path, db: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key_file, self.token_file = folder / "cluster.key", folder / "token"
        config = folder / "host.toml"
        config.write_text(_toml({
            "network": {"host_port": self.port, "host_bind_ip": "127.0.0.1"},
            "paths": {"shared_dir": str(folder / "shared"), "local_temp_dir": str(folder / "tmp")},
            "database": {"db_file": str(db)},
            "timing": {"heartbeat_interval": INTERVAL},
            "auth": {"cluster_key_file": str(self.key_file), "token_file": str(self.token_file)},
        }))
        self.log = open(folder / "host.log", "wb")
        self.proc = subprocess.Popen([*program("host"), "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._up, 120, "the host to listen")
            self.process = psutil.Process(self.proc.pid)
            self.token = self.token_file.read_text().strip()
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            tail = (self.folder / "host.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"bench_scale: the host exited with code {self.proc.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self.token_file.exists()
        except OSError:
            return False

    def stop(self) -> None:
        end_process(self.proc)
        self.log.close()


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vals.items()) for s, vals in sections.items())


class RssPeak:
    """The host's highest RSS, sampled every 0.25 s on a thread."""

    def __init__(self, process: psutil.Process) -> None:
        self.process, self.peak_mb = process, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Run:
    """A host with `nodes` simulated nodes, and a user's keep-alive connection to it."""

    def __init__(self, host: Host, gens: Generators, nodes: int, cores: int) -> None:
        self.host, self.gens, self.nodes, self.cores = host, gens, nodes, cores
        self.conn = HostConnection(host.url, timeout=300, token=host.token)
        self.rss = RssPeak(host.process)
        #: tasks submitted and not placed (every core is taken once the placement is done)
        self.queued = 0
        self.running_ids: list[str] = []
        self.pending_ids: list[str] = []

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[float, bytes]:
        start = time.perf_counter()
        raw = self.conn.call(method, path, body, idempotent=method == "GET")
        return time.perf_counter() - start, raw

    def cpu_seconds(self) -> float:
        return sum(self.host.process.cpu_times()[:2])

    def rss_mb(self) -> float:
        return self.host.process.memory_info().rss / 2**20

    def wait_online(self) -> None:
        def online() -> bool:
            views = json.loads(self.call("GET", p.NODES)[1])
            return sum(v["state"] == "online" and v["name"].startswith("sim-") for v in views) == self.nodes

        wait_for(online, ONLINE_BUDGET, f"{self.nodes} simulated nodes online")


@contextlib.contextmanager
def running(folder: Path, db: Path, nodes: int, cores: int) -> Iterator[Run]:
    """A host on `db` and generators for `nodes` nodes, all stopped on the way out, failure or not."""
    host = Host(folder, db)
    gens = run = None
    try:
        gens = Generators(host.url, host.key_file, nodes, cores, folder)
        run = Run(host, gens, nodes, cores)
        run.wait_online()
        yield run
    finally:
        if run is not None:
            run.rss.stop()
            run.conn.close()
        if gens is not None:
            gens.stop()
        host.stop()


# ---- measurements -----------------------------------------------------------------------------
def window(run: Run, work: Callable[[], Any] | None = None, seconds: float = 0.0) -> tuple[Any, dict]:
    """Run `work` (or sleep `seconds`); the host's CPU and RSS meanwhile, and how the heartbeats went."""
    before, cpu, start = run.gens.stats(), run.cpu_seconds(), time.perf_counter()
    out = work() if work is not None else time.sleep(seconds)
    after, cpu, wall = run.gens.stats(), run.cpu_seconds() - cpu, time.perf_counter() - start
    metrics = {"seconds": wall, "host_cpu_percent": cpu / wall * 100, "host_rss_mb": run.rss_mb(),
               **heartbeats(run, before, after, wall)}
    # the generators kept up if their loops were never late and every answer was followed by the next heartbeat
    # at once; a heartbeat rate under nodes/5 is then the host's lateness (late_*), not theirs
    metrics["generator_kept_up"] = not (metrics["generator_lag_p99_ms"] > 50 or metrics["generator_resend_p99_ms"] > 50)
    return out, metrics


def heartbeats(run: Run, before: dict, after: dict, wall: float) -> dict:
    """How the heartbeats went between two questions to the generators, `wall` seconds apart."""
    periods = after["period_s"]
    return {
        # each node's own rate (from the period between its idle heartbeats), summed: no phase effects of the window
        "heartbeats_per_s": run.nodes / statistics.fmean(periods) if periods else float("nan"),
        "expected_per_s": run.nodes / INTERVAL, "answered_per_s": (after["heartbeats"] - before["heartbeats"]) / wall,
        "idle_periods": len(periods), "late_p50_ms": percentile(after["late_ms"], 50),
        # uniform = 1 / PHASES; near 1: every node heartbeats at the same moment of the cycle (in step since a burst)
        "busiest_phase_share": max(after["phases"]) / sum(after["phases"]) if sum(after["phases"]) else float("nan"),
        "late_p99_ms": percentile(after["late_ms"], 99), "late_max_ms": max(after["late_ms"], default=float("nan")),
        "generator_lag_p99_ms": percentile(after["lag_ms"], 99), "generator_lag_max_ms": max(after["lag_ms"], default=float("nan")),
        "generator_resend_p99_ms": percentile(after["resend_ms"], 99),
        "generator_resend_max_ms": max(after["resend_ms"], default=float("nan")),
        "generator_cpu_percent": (after["cpu_seconds"] - before["cpu_seconds"]) / wall * 100,
        "generator_processes": len(run.gens.procs), "errors": after["errors"] - before["errors"],
        "last_error": after["last_error"],
    }


def placement(run: Run) -> dict:
    """Every core of the idle nodes filled by one batch of one-core tasks: until launched, and until started."""
    n = run.nodes * run.cores
    body = p.encode(p.SubmitRequest([p.TaskSpec("/bin/true")] * n, batch=True))
    base, cpu = run.gens.stats(), run.cpu_seconds()
    start = time.time()
    submit, raw = run.call("POST", p.TASKS, body)
    run.running_ids = p.decode(raw, p.SubmitReply).task_ids
    deadline = time.monotonic() + PLACE_BUDGET
    stats = run.gens.stats()
    while stats["acked"] - base["acked"] < n and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = run.gens.stats()
    cpu = run.cpu_seconds() - cpu
    placed = stats["acked"] - base["acked"]
    started = stats["last_ack"] - start
    return {"nodes": run.nodes, "cores": run.cores, "tasks": n, "placed": placed, "complete": placed == n,
            "submit_seconds": submit, "first_launch_seconds": stats["first_launch"] - start,
            "all_launched_seconds": stats["last_launch"] - start, "all_started_seconds": started,
            "us_per_placement": started / n * 1e6, "host_cpu_seconds": cpu, "host_cpu_us_per_placement": cpu / n * 1e6,
            "overbooked": stats["overbooked"], "heartbeat_errors": stats["errors"] - base["errors"],
            "last_error": stats["last_error"]}


def scheduler_alone(nodes: int, cores: int) -> dict:
    """core.Cluster.schedule in this process: nodes x cores one-core tasks onto idle nodes, nothing else."""
    from hakuriver.core.cluster import Cluster, NodeReport
    from hakuriver.core.model import Task

    cluster, now = Cluster(30.0), time.time()
    for i in range(nodes):
        cluster.on_heartbeat(NodeReport(f"sim-{i:04d}", tuple(range(cores)), 2**30), set(), now)
    tasks = [Task(str(uuid.uuid4()), "/bin/true", [], {}, 1, now, batch_id="b") for _ in range(nodes * cores)]
    cluster.on_submit(tasks, now)
    start = time.perf_counter()
    placed = sum(1 for e in cluster.schedule() if type(e).__name__ == "TaskChanged")
    seconds = time.perf_counter() - start
    return {"nodes": nodes, "placements": placed, "seconds": seconds, "us_per_placement": seconds / max(1, placed) * 1e6}


def summary(times: list[float], target: float | None) -> dict:
    p99 = percentile(times, 99) * 1000
    out = {"samples": len(times), "p50_ms": percentile(times, 50) * 1000, "p99_ms": p99,
           "max_ms": max(times, default=float("nan")) * 1000, "target_p99_ms": target}
    if target is not None:
        out["meets_target"] = p99 <= target
    return out


def single_requests(run: Run, finished_ids: list[str], samples: int) -> dict[str, list[float]]:
    """`samples` of each kind, interleaved, so that each meets the heartbeats' bursts alike."""
    one = p.encode(p.SubmitRequest([p.TaskSpec("/bin/true")]))
    kinds: dict[str, Callable[[int], tuple[str, str, bytes]]] = {
        "submit 1 task": lambda i: ("POST", p.TASKS, one),
        "status: running task": lambda i: ("GET", p.TASK.format(task_id=run.running_ids[i * 7919 % len(run.running_ids)]), b""),
        "status: pending task": lambda i: ("GET", p.TASK.format(task_id=run.pending_ids[i * 7919 % len(run.pending_ids)]), b""),
        "status: finished task (history)": lambda i: ("GET", p.TASK.format(task_id=finished_ids[i % len(finished_ids)]), b""),
        "--list (GET /api/tasks, default page)": lambda i: ("GET", p.TASKS, b""),
        "node list (GET /api/nodes)": lambda i: ("GET", p.NODES, b""),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    deadline = time.monotonic() + ROUND_BUDGET
    for i in range(samples):
        if time.monotonic() > deadline:
            break
        for name, request in kinds.items():
            seconds, raw = run.call(*request(i))
            times[name].append(seconds)
            if name.startswith("submit"):
                run.pending_ids += p.decode(raw, p.SubmitReply).task_ids
                run.queued += 1
        time.sleep(0.002)
    return times


def submit_batches(run: Run, body: bytes, size: int, count: int) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + ROUND_BUDGET
    while len(times) < count and time.monotonic() < deadline:
        seconds, raw = run.call("POST", p.TASKS, body)
        times.append(seconds)
        run.pending_ids.append(p.decode(raw, p.SubmitReply).task_ids[size // 2])
        run.queued += size
    return times
