"""j. The host's own CPU per task, in-process: a steady number for the host's hot path.

The bulk rows measure the whole machine, and on a small VM they move by several percent from
run to run; a change to the host that saves a few microseconds per task is lost in that. Here
the host's service runs on its own event loop in this process, on a database on the cluster's
file system, and four simulated runners of two cores that queue ahead drive it as real ones do:
each report (encoded and decoded as on the wire) carries up to 16 results and takes the next
orders from its acknowledgement. What is counted is the CPU time of this thread while N tasks
are submitted in one batch, placed, queued ahead, reported finished and committed, less what
the simulated runners spend building, encoding and decoding their side of the messages.

    .venv/bin/python benchmarks/bench_host_cpu.py [TASKS]    # alone: prints the JSON
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hakuriver import protocol as p
from hakuriver.core.cluster import Cluster
from hakuriver.host.service import HostService
from hakuriver.host.store import Store

NODES, CORES, RESULTS_PER_REPORT = 4, 2, 16


class _Simulation:
    """The host's service and four simulated runners that queue ahead, on this event loop."""

    def __init__(self, folder: Path) -> None:
        self.store = Store(str(folder / "host.db"))
        self.service = HostService(Cluster(heartbeat_timeout=30, ahead_wait=5.0), self.store)
        self.nodes = [p.NodeInfo(f"sim-{i}", list(range(CORES)), queues_ahead=True, runner_id=f"sim-{i}")
                      for i in range(NODES)]
        self.held: dict[str, dict[str, p.LaunchOrder]] = {n.name: {} for n in self.nodes}
        self.clock = 1.0
        #: CPU seconds the simulated runners spent (building, encoding, decoding): not the host's
        self.runner_side = 0.0

    def as_runner(self, work):  # noqa: ANN001, ANN201 - what a runner does, timed apart
        start = time.thread_time()
        try:
            return work()
        finally:
            self.runner_side += time.thread_time() - start

    async def join(self) -> None:
        for n in self.nodes:
            await self.service.heartbeat(p.Heartbeat(n))

    async def take_orders(self, n: p.NodeInfo) -> None:
        mine = self.held[n.name]
        heartbeat = self.as_runner(lambda: p.Heartbeat(n, held=list(mine), wait=0))
        sent = p.encode(await self.service.heartbeat(heartbeat))
        self.as_runner(lambda: mine.update((o.task_id, o) for o in p.decode(sent, p.Orders).launch))

    def _results(self, n: p.NodeInfo) -> tuple[bytes, int]:
        mine, t = self.held[n.name], self.clock
        done = [p.TaskFinished(k, t + 0.001, exit_code=0, started_at=t, stdout_path=f"/out/{k}.out",
                               stderr_path=f"/out/{k}.err", cpu_user_seconds=0.0005, cpu_system_seconds=0.0003,
                               max_rss_bytes=1 << 20) for k in list(mine)[:RESULTS_PER_REPORT]]
        for f in done:
            del mine[f.task_id]
        return p.encode(p.Report(n.name, finished=done, held=list(mine))), len(done)

    def _take(self, n: p.NodeInfo, ack: bytes) -> None:
        orders = p.decode(ack, p.Ack).orders
        if orders is not None:
            self.held[n.name].update((o.task_id, o) for o in orders.launch)

    async def report(self, n: p.NodeInfo) -> int:
        body, count = self.as_runner(lambda: self._results(n))
        self.clock += 0.002
        answer = p.encode(self.service.report(p.decode(body, p.Report)))
        await self.service.settled()
        self.as_runner(lambda: self._take(n, answer))
        return count

    async def batch(self, size: int) -> None:
        specs = self.as_runner(lambda: [p.TaskSpec("/bin/true", env={"HAKURIVER_ARRAY_INDEX": str(i)})
                                        for i in range(size)])
        await self.service.submit(specs, batch=True)
        await asyncio.sleep(0)  # the planning pass runs at the end of the loop iteration
        for n in self.nodes:
            await self.take_orders(n)
        done = 0
        while done < size:
            reported = [await self.report(n) for n in self.nodes]
            done += sum(reported)
            await asyncio.sleep(0)
            if not any(reported):  # nothing held anywhere: what the host placed since goes out on heartbeats
                for n in self.nodes:
                    await self.take_orders(n)
        await self.service.settled()


async def _rounds(folder: Path, tasks: int, rounds: int) -> list[float]:
    sim = _Simulation(folder)
    try:
        await sim.join()
        await sim.batch(min(500, tasks))  # warm-up: imports, first messages, the batch found short
        seconds = []
        for _ in range(rounds):
            gc.collect()
            start, sim.runner_side = time.thread_time(), 0.0
            await sim.batch(tasks)
            seconds.append(time.thread_time() - start - sim.runner_side)
        return seconds
    finally:
        sim.store.close()


def host_cpu(folder: Path, tasks: int, rounds: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    seconds = asyncio.run(_rounds(folder, tasks, rounds))
    per_task = [s / tasks * 1e6 for s in seconds]
    return {"tasks": tasks, "rounds": rounds, "simulated_runners": NODES, "cores_each": CORES,
            "us_per_task": statistics.median(per_task), "us_per_task_rounds": per_task}


def rows(r: dict) -> list[tuple[str, str]]:
    return [(f"host CPU per task, in-process ({r['simulated_runners']} sim. runners queueing ahead, {r['tasks']} tasks)",
             f"{r['us_per_task']:.1f} us (median of {r['rounds']}; "
             + ", ".join(f"{x:.1f}" for x in r["us_per_task_rounds"]) + ")")]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/dev/shm")) as tmp:
        print(json.dumps(host_cpu(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 5000, 3), indent=2))
