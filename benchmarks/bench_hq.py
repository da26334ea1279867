"""HyperQueue beside HakuRiver's bulk row: same machine, same folder, same workload, same clock.

Measured: `tasks` one-core `/bin/true` tasks submitted as ONE job, each with its own stdout and stderr
file (`<folder>/out/<round>/<task id>.out` and `.err`, as HakuRiver writes `<id>.out`/`<id>.err`), from
the submit call until the server reports every task finished. As in the bulk row: a fresh cluster, an
uncounted warm-up job (100 tasks), then `rounds` rounds, best and median reported, every task checked.

The cluster is `hyperqueue.cluster.LocalCluster` (the `hyperqueue` wheel embeds the real HyperQueue
server and workers in a Rust extension): a server and `workers` workers of `cores_per_worker` CPUs each,
their folders in `folder`. LocalCluster runs them as threads of the process that makes it, so here they
get a process of their own (as `hq server`/`hq worker` would), and the benchmark is their client.

The Python API has no array job: the job's N tasks come from N `Job.program` calls with the same output
paths holding HyperQueue's `%{TASK_ID}` placeholder (as `hq submit --array` uses), made before the clock
starts. Its `wait_for_jobs` asks the server once a second, too coarse to time a job of a second or two,
so the job is polled every `POLL` seconds instead (see `_wait`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

POLL = 0.02  # seconds between two job-status requests while a job runs
WARMUP = 100

# The HyperQueue server and its workers, in a process of their own until its stdin is closed.
SERVE = """
import sys
from pathlib import Path
from hyperqueue.cluster import LocalCluster, WorkerConfig
server_dir, workers, cores, ready = sys.argv[1:]
cluster = LocalCluster(server_dir)  # a str: a Path is refused, though its type hint says Path
for _ in range(int(workers)):
    cluster.start_worker(WorkerConfig(cores=int(cores)))  # returns once the worker is registered
Path(ready).touch()
sys.stdin.read()
cluster.stop()
"""


def hyperqueue(folder: Path, tasks: int, workers: int, cores_per_worker: int, rounds: int = 1) -> dict | None:
    """Bulk throughput of HyperQueue (see the module docstring), or None without the `hyperqueue` package.
    `folder` should be new or empty; everything HyperQueue writes goes into it."""
    try:
        import hyperqueue as hq
    except ImportError:
        return None
    folder = Path(folder)
    server = _start(folder, workers, cores_per_worker)
    try:
        client = hq.Client(folder / "server")
        _round(client, folder / "out" / "warmup", min(WARMUP, tasks))
        times = []
        for i in range(rounds):
            os.sync()  # as bench.py's rounds: nothing left to write back from the one before
            times.append(_round(client, folder / "out" / f"round-{i + 1}", tasks))
        del client  # its connection, before the server goes
    finally:
        _stop(server)
    rates = [tasks / t for t in times]
    return {"version": hq.get_version().lstrip("v"), "workers": workers, "cores_per_worker": cores_per_worker,
            "tasks": tasks, "rounds": rounds, "seconds": min(times), "per_second": tasks / min(times),
            "per_second_median": statistics.median(rates), "per_second_rounds": rates}


def _round(client, out: Path, n: int) -> float:  # noqa: ANN001 - a hyperqueue.Client
    """Seconds from submitting a job of `n` tasks writing their output files into `out` until it is complete."""
    from hyperqueue import Job
    from hyperqueue.ffi.protocol import ResourceRequest

    out.mkdir(parents=True)
    job = Job(default_workdir=out)
    for _ in range(n):
        job.program(["/bin/true"], stdout=str(out / "%{TASK_ID}.out"), stderr=str(out / "%{TASK_ID}.err"),
                    resources=ResourceRequest(cpus=1))
    start = time.perf_counter()
    job_id = client.submit(job).id
    state = _wait(client, job_id, timeout=60 + n / 20)
    elapsed = time.perf_counter() - start
    made = sum(1 for p in out.iterdir() if p.suffix == ".out")
    if state["finished"] != n or state["failed"] or state["failed_jobs"] or made != n:
        raise SystemExit(f"bench: HyperQueue job {job_id} of {n} tasks: {state}, {made} stdout files")
    return elapsed


class _Pending(Exception):
    pass


def _wait(client, job_id: int, timeout: float) -> dict:  # noqa: ANN001 - a hyperqueue.Client
    """The job's counters once it is complete. The API's wait asks the server for the job's state, calls
    back with it, then sleeps a second and asks again; a callback that raises ends that wait after a
    single request, which makes it a status request that can be repeated every POLL seconds."""
    seen: dict = {}

    def check(status: dict) -> None:
        seen.update(status[job_id])
        if not seen["completed"]:
            raise _Pending

    deadline = time.monotonic() + timeout
    while True:
        try:
            return seen | {"failed_jobs": client.connection.wait_for_jobs([job_id], check)}
        except _Pending:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: HyperQueue job {job_id} not complete after {timeout:.0f} s: {seen}") from None
            time.sleep(POLL)


def _start(folder: Path, workers: int, cores: int) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "server-ready"
    with open(folder / "hyperqueue.log", "wb") as log:  # the server prints its settings on stdout
        argv = [sys.executable, "-c", SERVE, str(folder / "server"), str(workers), str(cores), str(ready)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail = (folder / "hyperqueue.log").read_text(errors="replace").strip().splitlines()[-2:]
            raise SystemExit(f"bench: the HyperQueue cluster did not start: {' '.join(tail)}")
        time.sleep(0.02)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and workers, and check that neither they nor any task is left running."""
    try:
        started = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        started = []
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(started, timeout=5)
    for p in alive:
        p.kill()
    if alive or proc.returncode != 0:
        raise SystemExit(f"bench: HyperQueue did not stop cleanly (exit {proc.returncode}, {len(alive)} left running)")
