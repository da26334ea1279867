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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import resource
import select
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bench_history  # next to this file (the script's folder is on sys.path)
from bench_cluster import filesystem, free_port, percentile, wait_for
import psutil

from hakuriver import protocol as p
from hakuriver.core.model import run_key, split_run_key
from hakuriver.transport import HostConnection

#: [timing] heartbeat_interval: the default, written into the host's config as it is
INTERVAL = 5.0
SINGLE_TARGET_MS = 50.0
RSS_TARGET_MB = 300.0
BATCH = 10_000
NODES_PER_GENERATOR = 500
#: seconds: sampling one round, waiting for a placement, for nodes to come online, a generator's whole life
ROUND_BUDGET = 180.0
PLACE_BUDGET = 600.0
ONLINE_BUDGET = 60.0
GENERATOR_LIFE = 3600.0
#: the most samples of lateness and lag a generator keeps between two questions
KEEP = 200_000
#: the heartbeat cycle in this many phases, to see whether the nodes' heartbeats come in one burst
PHASES = 10
SHARED = "/mnt/cluster/shared/task_outputs"
SIZES = {
    "full": {"nodes": 1000, "cores": 64, "queued": 100_000, "history": 1_000_000, "samples": 300},
    "quick": {"nodes": 20, "cores": 4, "queued": 500, "history": 2_000, "samples": 20},
}


def raise_fd_limit() -> None:
    """1,000 nodes are 1,000 connections at the host and at the generators."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---- the load generator (a child process) -------------------------------------------------------
class HttpError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection of a simulated runner."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, host: str, port: int, auth: bytes) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, b"Host: %s:%d\r\n%sContent-Type: application/json\r\n" % (host.encode(), port, auth))

    async def call(self, path: str, body: bytes, timeout: float) -> bytes:
        self.writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (path.encode(), self.head, len(body), body))
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            start = head.lower().find(b"content-length:")
            if start < 0:
                raise HttpError("an answer without Content-Length")
            data = await self.reader.readexactly(int(head[start + 15:head.find(b"\r\n", start)]))
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise HttpError(f"HTTP {status}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.writer.close()


class SimNode:
    """What one simulated runner holds: it starts every launch at once and never ends it."""

    def __init__(self, name: str, cores: int) -> None:
        self.name, self.cores = name, cores
        self.info = p.NodeInfo(name, list(range(cores)), 256 * 2**30)
        self.held: dict[str, None] = {}
        self._body: bytes | None = None
        #: monotonic times: the last heartbeat sent, its answer (0: none yet), and whether it was idle
        self.sent = self.answered = 0.0
        self.idle = False

    def heartbeat(self) -> bytes:
        if self._body is None:
            self._body = p.encode(p.Heartbeat(self.info, list(self.held), wait=INTERVAL))
        return self._body

    def obey(self, orders: p.Orders, now: float) -> p.Report | None:
        started = []
        for order in orders.launch:
            key = run_key(order.task_id, order.attempt)
            if key not in self.held:
                self.held[key] = None
                started.append(p.TaskStarted(order.task_id, now, f"{SHARED}/{order.task_id}.out",
                                             f"{SHARED}/{order.task_id}.err", attempt=order.attempt))
        finished = []
        for key in orders.kill:  # none are expected; answered as a runner would, all the same
            if self.held.pop(key, "gone") is None:
                task_id, attempt = split_run_key(key)
                finished.append(p.TaskFinished(task_id, now, signal=15, killed=True, started_at=now, attempt=attempt))
        if not (started or finished):
            return None
        self._body = None
        return p.Report(self.name, started, finished)


class Sim:
    """Simulated runners `first` .. `first + count - 1` of `nodes`, on one asyncio loop."""

    def __init__(self, url: str, key: str, first: int, count: int, nodes: int, cores: int) -> None:
        rest = url.split("://", 1)[1]
        self.host, self.port = rest.rsplit(":", 1)[0], int(rest.rsplit(":", 1)[1])
        self.auth = b"Authorization: Bearer %s\r\n" % key.encode()
        self.first, self.count, self.nodes, self.cores = first, count, nodes, cores
        self.n = dict.fromkeys(("heartbeats", "idle_answers", "errors", "launched", "acked", "overbooked"), 0)
        self.first_launch = self.last_launch = self.last_ack = 0.0
        #: since the last question: how late the host answered idle long-polls, this loop's lag, how long a node
        #: took to send its next heartbeat after an answer, and each node's heartbeat period (idle ones only)
        self.late_ms: list[float] = []
        self.lag_ms: list[float] = []
        self.resend_ms: list[float] = []
        self.period_s: list[float] = []
        #: idle answers by their phase in the heartbeat cycle (wall clock modulo the interval), in PHASES bins
        self.phases = [0] * PHASES
        self.last_error = ""
        self.empty = p.encode(p.Orders())

    async def run(self) -> None:
        self.stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._stdin, args=(loop,), daemon=True).start()
        tasks = [asyncio.create_task(self.node(i)) for i in range(self.first, self.first + self.count)]
        tasks.append(asyncio.create_task(self.watch_lag()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), GENERATOR_LIFE)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def node(self, i: int) -> None:
        await asyncio.sleep(INTERVAL * i / self.nodes)  # runners start at different times: spread over one interval
        node = SimNode(f"sim-{i:04d}", self.cores)
        conn: Conn | None = None
        while not self.stop.is_set():
            try:
                conn = conn or await Conn.open(self.host, self.port, self.auth)
                await self.beat(conn, node)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError,
                    p.DecodeError, ValueError) as exc:
                self.n["errors"] += 1
                self.last_error = f"{node.name}: {type(exc).__name__} {exc}"[:300]
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.5)

    async def beat(self, conn: Conn, node: SimNode) -> None:
        body, sent = node.heartbeat(), time.monotonic()
        if node.answered:
            _keep(self.resend_ms, (sent - node.answered) * 1000)
            if node.idle:
                _keep(self.period_s, sent - node.sent)
        node.sent, node.answered = sent, 0.0
        raw = await conn.call(p.RUNNER_HEARTBEAT, body, 2 * INTERVAL + 2)  # the runner's own timeout
        node.answered = time.monotonic()
        node.idle = raw == self.empty
        self.n["heartbeats"] += 1
        if node.idle:
            self.n["idle_answers"] += 1
            # an idle long-poll ends on the host's clock: a hair before our 5 s counts as on time
            _keep(self.late_ms, max(0.0, node.answered - sent - INTERVAL) * 1000)
            self.phases[int(time.time() % INTERVAL / INTERVAL * PHASES) % PHASES] += 1
            return
        now = time.time()
        before = len(node.held)
        report = node.obey(p.decode(raw, p.Orders), now)
        if len(node.held) > before:
            self.n["launched"] += len(node.held) - before
            self.first_launch = self.first_launch or now
            self.last_launch = now
        self.n["overbooked"] += len(node.held) > node.cores
        if report is not None:
            await conn.call(p.RUNNER_REPORT, p.encode(report), 2 * INTERVAL + 5)
            self.n["acked"] += len(report.started)
            self.last_ack = time.time()

    async def watch_lag(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            await asyncio.sleep(0.05)
            _keep(self.lag_ms, max(0.0, time.monotonic() - start - 0.05) * 1000)

    def _stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        """Each line asks for the counters; the end of stdin stops the generator."""
        try:
            while sys.stdin.buffer.readline():
                loop.call_soon_threadsafe(self._answer)
            loop.call_soon_threadsafe(self.stop.set)
        except RuntimeError:  # the loop is closed already (its life ran out)
            pass

    def _answer(self) -> None:
        reply = {**self.n, "first_launch": self.first_launch, "last_launch": self.last_launch, "last_ack": self.last_ack,
                 "late_ms": self.late_ms, "lag_ms": self.lag_ms, "resend_ms": self.resend_ms, "period_s": self.period_s,
                 "phases": self.phases, "last_error": self.last_error}
        self.late_ms, self.lag_ms, self.resend_ms, self.period_s, self.phases = [], [], [], [], [0] * PHASES
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _keep(values: list[float], value: float) -> None:
    if len(values) < KEEP:
        values.append(value)


def loadgen(argv: list[str]) -> None:
    """The child: URL KEY_FILE FIRST COUNT NODES CORES."""
    url, key_file, first, count, nodes, cores = argv
    raise_fd_limit()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sim = Sim(url, Path(key_file).read_text().strip(), int(first), int(count), int(nodes), int(cores))
    asyncio.run(sim.run())


# ---- the host and the generators, seen from the benchmark ----------------------------------------
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
        self.proc = subprocess.Popen([sys.executable, "-m", "hakuriver.host.main", "--config", str(config)],
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
        _end(self.proc)
        self.log.close()


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vals.items()) for s, vals in sections.items())


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


class Generators:
    """The load generator processes: `nodes` simulated runners, at most NODES_PER_GENERATOR in each."""

    def __init__(self, host: Host, nodes: int, cores: int, folder: Path) -> None:
        count = math.ceil(nodes / NODES_PER_GENERATOR)
        self.procs: list[subprocess.Popen] = []
        self.log = open(folder / "generators.log", "wb")
        try:
            for k in range(count):
                first, last = k * nodes // count, (k + 1) * nodes // count
                argv = [host.url, str(host.key_file), str(first), str(last - first), str(nodes), str(cores)]
                self.procs.append(subprocess.Popen([sys.executable, __file__, "--loadgen", *argv], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, stderr=self.log, start_new_session=True))
            self.processes = [psutil.Process(proc.pid) for proc in self.procs]
        except BaseException:
            self.stop()
            raise

    def stats(self) -> dict[str, Any]:
        """The counters of every generator (summed), and their lateness and lag samples since the last call."""
        replies = [self._ask(proc) for proc in self.procs]
        merged: dict[str, Any] = {k: sum(r[k] for r in replies) for k in replies[0] if isinstance(replies[0][k], int)}
        merged.update(first_launch=min((r["first_launch"] for r in replies if r["first_launch"]), default=0.0),
                      last_launch=max(r["last_launch"] for r in replies), last_ack=max(r["last_ack"] for r in replies),
                      **{k: [v for r in replies for v in r[k]] for k in ("late_ms", "lag_ms", "resend_ms", "period_s")},
                      phases=[sum(bins) for bins in zip(*(r["phases"] for r in replies))],
                      last_error=next((r["last_error"] for r in replies if r["last_error"]), ""),
                      cpu_seconds=sum(sum(proc.cpu_times()[:2]) for proc in self.processes))
        return merged

    def _ask(self, proc: subprocess.Popen) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"stats\n")
        proc.stdin.flush()
        if not select.select([proc.stdout], [], [], 30)[0]:
            raise RuntimeError("bench_scale: a load generator did not answer in 30 s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_scale: a load generator exited (code {proc.poll()}); see generators.log")
        return json.loads(line)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.procs:
            _end(proc)
        self.log.close()


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
        gens = Generators(host, nodes, cores, folder)
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
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        loadgen(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs (seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON document here")
    parser.add_argument("--dir", metavar="FOLDER", help="make the temporary folder here (default: the system's temp folder)")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory(prefix="hakuriver-scale-", dir=args.dir) as tmp:
        result = scale(Path(tmp), **size)
    width = max(len(k) for k, _ in rows(result))
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows(result)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
