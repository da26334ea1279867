"""The load generator of bench_scale.py: simulated runners speaking the runner protocol, in child processes.

    .venv/bin/python benchmarks/bench_scale_load.py URL KEY_FILE FIRST COUNT NODES CORES   (started by Generators)

Each child runs its share of the nodes (at most NODES_PER_GENERATOR) on one asyncio loop, on raw
keep-alive sockets, the way hakuriver.runner talks: a heartbeat long-poll (wait = INTERVAL) sent
again as soon as it is answered, launch orders reported started at once, never finished. A line on
its stdin asks for its counters (one JSON line back); the end of stdin stops it. Generators is the
benchmark's side of those pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from hakuriver import protocol as p
from hakuriver.core.model import run_key, split_run_key

#: [timing] heartbeat_interval: the default, written into the host's config as it is
INTERVAL = 5.0
NODES_PER_GENERATOR = 500
#: seconds: a generator's whole life
GENERATOR_LIFE = 3600.0
#: the most samples of lateness and lag a generator keeps between two questions
KEEP = 200_000
#: the heartbeat cycle in this many phases, to see whether the nodes' heartbeats come in one burst
PHASES = 10
SHARED = "/mnt/cluster/shared/task_outputs"


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


# ---- the generators, seen from the benchmark ------------------------------------------------------
def end_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


class Generators:
    """The load generator processes: `nodes` simulated runners, at most NODES_PER_GENERATOR in each."""

    def __init__(self, url: str, key_file: Path, nodes: int, cores: int, folder: Path) -> None:
        count = math.ceil(nodes / NODES_PER_GENERATOR)
        self.procs: list[subprocess.Popen] = []
        self.log = open(folder / "generators.log", "wb")
        try:
            for k in range(count):
                first, last = k * nodes // count, (k + 1) * nodes // count
                argv = [url, str(key_file), str(first), str(last - first), str(nodes), str(cores)]
                self.procs.append(subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE,
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
            end_process(proc)
        self.log.close()


if __name__ == "__main__":
    loadgen(sys.argv[1:])
