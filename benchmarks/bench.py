#!/usr/bin/env python3
"""HakuRiver benchmark: a real local cluster, measured against this machine's own ceilings.

    .venv/bin/python benchmarks/bench.py            # full run, the realistic profile (~12 min)
    .venv/bin/python benchmarks/bench.py --quick    # tiny sizes, seconds (what the test suite runs)
    .venv/bin/python benchmarks/bench.py --json out.json
    .venv/bin/python benchmarks/bench.py --dir /some/disk   # the cluster's files there
    .venv/bin/python benchmarks/bench.py --tmpfs --loopback # the kinder profile
    .venv/bin/python benchmarks/bench.py --history-only      # only g. (a million-task database)

The realistic profile is the default: the cluster's files on disk (--dir, else a folder
./hakuriver-bench-data), `numactl_path` set when numactl is installed, and, as root, each
runner in its own network namespace with its own hostname (tests/netlab.py). --tmpfs puts the
files on /dev/shm, --loopback keeps the runners on 127.0.0.1. The first line of the table says
which profile ran and, if part of it could not be had, why.

It prints a table and a JSON document with:
  a. spawn ceiling: /bin/true spawned and reaped by as many threads as there are cores;
     contract ceiling: the same, plus what every task must do by contract (a scratch folder, its
     two output files), on the file system of the cluster's files. Each is the best of all its
     rounds: 3 before the cluster starts, and one right before each bulk round. Every ceiling,
     bulk and HyperQueue round starts after a `sync`, with nothing left to write back;
  b. bulk throughput: one `--array` submission of one-core /bin/true tasks (1,000 and 10,000),
     from the first submit (the host's submitted_at) until `--wait` returns with all final
     (after one uncounted 200-task warm-up batch on the fresh cluster), best of 5, as a share of
     the best ceiling rounds measured beside it (each round right before a batch: the VM's
     speed drifts from minute to minute), and of the run's best; and HyperQueue on the same
     tasks, side by side, when it is installed (`pip install '.[bench]'`; benchmarks/bench_hq.py);
  c. CLI throughput: tasks submitted by separate hakuriver.client processes, 8 at a time;
  d. latency: `hakuriver.client --cores 1 --wait -- true` next to `--list-nodes` (one request,
     no task) and `python -c pass`; their difference is the cluster's own share;
  e. host at scale: simulated runners heartbeating every second while 10,000 tasks are queued;
     p50/p99 of submit, status and node-list requests, host CPU and RSS;
  f. RSS of an idle host and an idle runner;
  h. dashboards: the host's CPU for a bulk batch with 100 event streams open and without, and the
     time from a task's start report to the event that shows it on its node's cores
     (benchmarks/bench_dashboards.py);
  i. scale of the host: 1,000 simulated nodes of 64 cores heartbeating every 5 s, a history of
     1,000,000 and 100,000 queued: request latencies, placing 64,000 tasks, CPU and RSS, and how the
     cost per placement grows from 100 to 1,000 nodes (benchmarks/bench_scale.py, which also runs alone);
  g. host on a long history: 1,000,000 finished + 10,000 active tasks written through the Store,
     then p50/p99 of --list (each filter) and status (full and short ID) requests to a host on
     that database, and its RSS, next to the targets (benchmarks/bench_history.py says more);
  j. the host's own CPU per task, in-process: its service driven by four simulated runners that
     queue ahead, 5,000 tasks, median of 3 (benchmarks/bench_host_cpu.py): a steady number for
     the host's hot path, which the machine-wide rows are too noisy to show.
Numbers are measured, never asserted: the tests only check that this runs and is well-formed.

On some file systems (ext4 without a journal, as on the VM these numbers come from) the cost of
creating a file grows with the number of files deleted in the last few minutes, so numbers
measured there swing with whatever ran before; the file system used is in the output. The
history database of g. goes to the same folder (about 550 MB in the full run), and is removed
after it.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_dashboards  # next to this file (the script's folder is on sys.path)
import bench_history
import bench_host_cpu
import bench_hq
import bench_scale
from bench_cluster import (Cluster, Profile, best_of, ceilings, ceilings_round, emit, filesystem, keeper_of, percentile,
                           profile, program, rss_mb, wait_for)
import psutil

from hakuriver import protocol as p
from hakuriver.transport import ApiError, HostConnection, HostUnreachable

RUNNERS = 4
#: seconds a cluster is left to settle after a batch, before a ceiling round beside the next
SETTLE = 0.5


# ---- b. bulk throughput ----------------------------------------------------------------------
def bulk(cluster: Cluster, n: int, rounds: int, beside: Callable[[], tuple[float, float]]) -> dict:
    """The best of `rounds` batches, each right after one round of both ceilings (`beside`), and
    its ratio to the best of those rounds. The speed of a small VM drifts by several percent from
    one minute to the next, more than within one: a ratio is only fair between numbers measured
    in the same minute, as in benchmarks/ab_bulk.py. Best against best, so the two are compared
    alike; every round's rates are in the JSON, and the ratio to the run's best ceilings too."""
    runs, spawn, contract = [], [], []
    for _ in range(rounds):
        time.sleep(SETTLE)  # the last batch's reports, commits and checkpoint done before a ceiling round
        s, c = beside()
        spawn.append(s)
        contract.append(c)
        os.sync()  # as the ceiling round did: nothing of it left to write back
        runs.append(bulk_round(cluster, n))
    best = min(runs, key=lambda r: r["seconds"])
    rate = n / best["seconds"]
    rates = [n / r["seconds"] for r in runs]
    return {"tasks": n, "rounds": rounds, "seconds": best["seconds"], "per_second": rate,
            "ratio_to_ceiling": rate / max(spawn), "ratio_to_contract": rate / max(contract),
            "ceilings_beside": {"spawn_per_second": max(spawn), "contract_per_second": max(contract),
                                "spawn_per_second_rounds": spawn, "contract_per_second_rounds": contract},
            "per_second_rounds": rates,
            "per_second_median": statistics.median(rates),
            "seconds_with_client_start": best["seconds_with_client_start"]}


def bulk_round(cluster: Cluster, n: int) -> dict:
    """From the first submit (the host's submitted_at of the batch, read from its database)
    until `--wait` returns with every task final; the client's Python start-up before it
    submits is left out (it is in `seconds_with_client_start`)."""
    start_wall, start = time.time(), time.perf_counter()
    res = cluster.client("--array", f"1-{n}", "--wait", "--", "/bin/true")
    end_wall, elapsed_outside = time.time(), time.perf_counter() - start
    if res.returncode != 0 or f"{n} tasks: {n} completed" not in res.stdout:
        raise SystemExit(f"bench: bulk run of {n} failed: {res.stdout[-500:]} {res.stderr[-500:]}")
    batch_id = res.stdout.split()[0]
    first_submit = cluster.first_submit(batch_id)
    if not start_wall <= first_submit <= end_wall:
        raise SystemExit(f"bench: batch {batch_id} was submitted at {first_submit}, outside the run")
    return {"seconds": end_wall - first_submit, "seconds_with_client_start": elapsed_outside}


# ---- c. CLI throughput -----------------------------------------------------------------------
def cli_throughput(cluster: Cluster, n: int, parallel: int) -> dict:
    def one(_: int) -> str:
        res = cluster.client("--", "/bin/true")
        if res.returncode != 0:
            raise SystemExit(f"bench: client failed: {res.stderr}")
        return res.stdout.strip()

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        ids = list(pool.map(one, range(n)))
    client = cluster.api()
    for task_id in ids:
        while client.wait(task_id, 30).state not in ("completed", "failed", "killed", "lost"):
            pass
    elapsed = time.perf_counter() - start
    return {"tasks": n, "parallel": parallel, "seconds": elapsed, "per_second": n / elapsed}


# ---- d. latency ------------------------------------------------------------------------------
def latency(cluster: Cluster, n: int) -> dict:
    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if res.returncode != 0:
            raise SystemExit(f"bench: {argv} failed: {res.stderr!r}")
        return elapsed

    client = program("client") + ["--config", str(cluster.config)]
    floor = [timed([sys.executable, "-c", "pass"]) for _ in range(n)]
    waits, one_request = [], []
    for _ in range(n):  # alternating, so that both see the same machine
        waits.append(timed(client + ["--cores", "1", "--wait", "--", "true"]))
        one_request.append(timed(client + ["--list-nodes"]))
    wait, request = statistics.median(waits), statistics.median(one_request)
    return {
        "runs": n,
        "wait_median_ms": wait * 1000,
        "wait_p95_ms": percentile(waits, 95) * 1000,
        "one_request_median_ms": request * 1000,
        # what --wait costs beyond a client that makes one request: the cluster's own share
        "cluster_share_ms": (wait - request) * 1000,
        "python_floor_median_ms": statistics.median(floor) * 1000,
        "over_floor_ms": (wait - statistics.median(floor)) * 1000,
    }


# ---- e. host at scale ------------------------------------------------------------------------
def loadgen(url: str, key_file: str, runners: int, cores: int) -> None:
    """Simulated runners speaking the runner protocol: heartbeat long-polls every second, take
    their launch orders, report them started, and never finish them (so the queue stays full)."""
    stop = threading.Event()

    def runner(i: int) -> None:
        conn = HostConnection(url, timeout=30, token=Path(key_file).read_text().strip())
        node = p.NodeInfo(f"sim-{i:03d}", list(range(cores)), 8 * 2**30)
        held: list[str] = []
        while not stop.is_set():
            try:
                raw = conn.call("POST", p.RUNNER_HEARTBEAT, p.encode(p.Heartbeat(node, held, wait=1.0)), timeout=10)
                orders = p.decode(raw, p.Orders)
                if orders.launch:
                    now = time.time()
                    held += [o.task_id for o in orders.launch]
                    report = p.Report(node.name, [p.TaskStarted(o.task_id, now) for o in orders.launch])
                    conn.call("POST", p.RUNNER_REPORT, p.encode(report))
            except (HostUnreachable, ApiError):
                time.sleep(0.5)

    threads = [threading.Thread(target=runner, args=(i,), daemon=True) for i in range(runners)]
    for t in threads:
        t.start()
    try:
        sys.stdin.read()  # until the benchmark closes our stdin
    finally:
        stop.set()


def host_at_scale(root: Path, runners: int, queued: int, samples: int) -> dict:
    cluster = Cluster(root, 0, 1)
    gen = subprocess.Popen([sys.executable, __file__, "loadgen", cluster.url, str(cluster.key_file), str(runners), "4"],
                           stdin=subprocess.PIPE)
    try:
        client = cluster.api()
        wait_for(lambda: len(client.nodes()) == runners, 60, f"{runners} simulated runners")
        ids = client.submit([p.TaskSpec("/bin/true") for _ in range(queued)]).task_ids
        wait_for(lambda: sum(n.free_cores for n in client.nodes()) == 0, 60, "simulated runners full")
        host = psutil.Process(cluster.host.pid)
        cpu_before, wall_before = host.cpu_times(), time.perf_counter()
        timings: dict[str, list[float]] = {"submit": [], "status": [], "nodes": []}
        for i in range(samples):
            for name, call in (
                ("submit", lambda: client.submit([p.TaskSpec("/bin/true")])),
                ("status", lambda i=i: client.task(ids[(i * 7919) % len(ids)])),
                ("nodes", client.nodes),
            ):
                start = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - start)
            time.sleep(0.005)
        cpu_after, wall = host.cpu_times(), time.perf_counter() - wall_before
        cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall
        result = {"simulated_runners": runners, "queued_tasks": queued, "samples": samples,
                  "host_cpu_percent": cpu * 100, "host_rss_mb": rss_mb(cluster.host.pid)}
        for name, values in timings.items():
            result[f"{name}_p50_ms"] = percentile(values, 50) * 1000
            result[f"{name}_p99_ms"] = percentile(values, 99) * 1000
        return result
    finally:
        gen.stdin.close()
        gen.wait(30)
        cluster.stop()


# ---- the run ---------------------------------------------------------------------------------
SIZES = {
    "full": {"ceiling": 1000, "warmup": 200, "bulk": [1000, 10000], "rounds": 5, "cli": 200, "latency": 20,
             "sim_runners": 100, "watchers": 100, "queued": 10000, "samples": 300, "history": (1_000_000, 10_000),
             "history_samples": 200, "host_cpu": 5000},
    "quick": {"ceiling": 100, "warmup": 10, "bulk": [50], "rounds": 1, "cli": 16, "latency": 3, "sim_runners": 10,
              "watchers": 5, "queued": 200, "samples": 20, "history": (2_000, 100), "history_samples": 20,
              "host_cpu": 200},
}


def default_dir(tmpfs: bool) -> str:
    """On disk: a folder under the current directory (the realistic profile); or /dev/shm (--tmpfs)."""
    if tmpfs:
        return "/dev/shm"
    folder = Path("hakuriver-bench-data").resolve()
    folder.mkdir(exist_ok=True)
    return str(folder)


def run(quick: bool, folder: str, prof: Profile, why: str, history_only: bool = False) -> dict:
    size = SIZES["quick" if quick else "full"]
    cores = os.cpu_count() or 1
    result: dict = {
        "machine": {"cpus": cores, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "platform": platform.platform()},
        "size": "quick" if quick else "full",
        "profile": {"numactl": prof.numactl, "netns": prof.netns, "not_realistic_because": why},
    }
    with tempfile.TemporaryDirectory(prefix="hakuriver-bench-", dir=folder) as tmp:
        result["cluster_files"] = {"folder": tmp, "filesystem": filesystem(tmp)}
        if not history_only:
            cluster_sections(result, size, Path(tmp), prof)
            result["host_cpu"] = bench_host_cpu.host_cpu(Path(tmp, "host-cpu"), size["host_cpu"], 3)
        result["history"] = bench_history.history(Path(tmp, "history"), *size["history"], size["history_samples"],
                                                  start_host=lambda root: Cluster(root, 0, 1))
        if not history_only:
            scale_size = bench_scale.SIZES["quick" if quick else "full"]
            result["scale"] = bench_scale.scale(Path(tmp, "scale-of-the-host"), **scale_size)
    return result


def cluster_sections(result: dict, size: dict, tmp: Path, prof: Profile) -> None:
    """Sections a. to f., h."""
    cores = os.cpu_count() or 1
    result["spawn_ceiling"], result["contract_ceiling"] = ceilings(Path(tmp, "contract"), size["ceiling"], 3)
    cluster = Cluster(Path(tmp, "cluster"), RUNNERS, cores, prof)
    try:
        time.sleep(1.0)  # let start-up settle before measuring idle memory
        result["idle_rss_mb"] = {"host": rss_mb(cluster.host.pid), "runner": rss_mb(cluster.runners[0].pid),
                                 "keeper": rss_mb(keeper_of(cluster.runners[0].pid))}
        # warm-up, not counted: a fresh cluster's first tasks also create its folders and files
        bulk_round(cluster, size["warmup"])
        beside = functools.partial(ceilings_round, Path(tmp, "contract"), size["ceiling"])
        result["bulk"] = [bulk(cluster, n, size["rounds"], beside) for n in size["bulk"]]
        run_best(result, size["ceiling"])
        # the best peer beside us: the same tasks, output files on the same file system, 4 workers of these cores
        peer = bench_hq.hyperqueue(Path(tmp, "hyperqueue"), size["bulk"][0], RUNNERS, cores, size["rounds"])
        result["hyperqueue"] = peer if peer is None else {**peer, "our_ratio": result["bulk"][0]["per_second"] / peer["per_second"]}
        result["cli"] = cli_throughput(cluster, size["cli"], 8)
        result["latency"] = latency(cluster, size["latency"])
        result["dashboards"] = {
            "cost": bench_dashboards.cost(cluster, size["watchers"], size["bulk"][0], size["rounds"], bulk_round),
            "latency": bench_dashboards.live_latency(cluster, size["latency"])}
    finally:
        cluster.stop()
    result["host_at_scale"] = host_at_scale(Path(tmp, "scale"), size["sim_runners"], size["queued"], size["samples"])


def run_best(result: dict, n: int) -> None:
    """Each ceiling becomes the best of all its rounds, before the cluster and beside the batches;
    each bulk row gets its ratio to those too (`..._of_run`: the harder comparison, across minutes)."""
    for name, key in (("spawn_ceiling", "spawn_per_second_rounds"), ("contract_ceiling", "contract_per_second_rounds")):
        rates = result[name]["per_second_rounds"] + [x for b in result["bulk"] for x in b["ceilings_beside"][key]]
        result[name] = best_of(n, rates)
    for b in result["bulk"]:
        b["ratio_to_ceiling_of_run"] = b["per_second"] / result["spawn_ceiling"]["per_second"]
        b["ratio_to_contract_of_run"] = b["per_second"] / result["contract_ceiling"]["per_second"]


def table(r: dict) -> str:
    rows = cluster_rows(r) if "spawn_ceiling" in r else []
    rows += bench_host_cpu.rows(r["host_cpu"]) if "host_cpu" in r else []
    rows += bench_history.rows(r["history"])
    rows += bench_scale.rows(r["scale"]) if "scale" in r else []
    width = max(len(k) for k, _ in rows)
    m = r["machine"]
    prof = Profile(r["profile"]["numactl"], r["profile"]["netns"])
    head = (f"HakuRiver benchmark ({r['size']}) on {m['cpus']} CPUs, {m['memory_gb']} GB, Python {m['python']}; "
            f"cluster files on {r['cluster_files']['filesystem']}; {prof.describe()}")
    if r["profile"]["not_realistic_because"]:
        head += f" ({r['profile']['not_realistic_because']})"
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def cluster_rows(r: dict) -> list[tuple[str, str]]:
    sc, cc = r["spawn_ceiling"], r["contract_ceiling"]
    rows = [(f"spawn ceiling (/bin/true, {sc['threads']} threads, best of {sc['rounds']})", f"{sc['per_second']:.0f} /s"),
            (f"contract ceiling (+ scratch folder, 2 output files; {cc['threads']} threads, best of {cc['rounds']})",
             f"{cc['per_second']:.0f} /s")]
    for b in r["bulk"]:
        label = f"bulk --array, {b['tasks']} tasks" + (f", best of {b['rounds']}" if b["rounds"] > 1 else "")
        median = f"; median {b['per_second_median']:.0f}" if b["rounds"] > 1 else ""
        side = b["ceilings_beside"]
        rows.append((label, f"{b['per_second']:.0f} /s{median}; {b['ratio_to_contract']:.0%} of the contract ceiling "
                            f"beside it ({side['contract_per_second']:.0f} /s), {b['ratio_to_ceiling']:.0%} of the spawn "
                            f"ceiling beside it; of the run's best: {b['ratio_to_contract_of_run']:.0%}, "
                            f"{b['ratio_to_ceiling_of_run']:.0%}"))
    hq = r.get("hyperqueue")
    if hq is None:
        rows.append(("HyperQueue, the same tasks", "not installed (pip install '.[bench]')"))
    else:
        rows.append((f"HyperQueue {hq['version']}, the same {hq['tasks']} tasks, {hq['workers']} workers",
                     f"{hq['per_second']:.0f} /s (median {hq['per_second_median']:.0f}); HakuRiver {hq['our_ratio']:.2f}x"))
    rows.append((f"CLI, {r['cli']['tasks']} client processes, 8 at a time", f"{r['cli']['per_second']:.0f} /s"))
    lat = r["latency"]
    rows.append(("--wait -- true, median / p95", f"{lat['wait_median_ms']:.0f} / {lat['wait_p95_ms']:.0f} ms"))
    rows.append(("--list-nodes (one request, no task), median", f"{lat['one_request_median_ms']:.0f} ms"))
    rows.append(("the cluster's own share of --wait (the two medians' difference)", f"{lat['cluster_share_ms']:.1f} ms"))
    rows.append(("python -c pass, median (floor)", f"{lat['python_floor_median_ms']:.0f} ms"))
    rows += bench_dashboards.rows(r["dashboards"])
    s = r["host_at_scale"]
    label = f"host with {s['simulated_runners']} sim. runners, {s['queued_tasks']} queued"
    for name in ("submit", "status", "nodes"):
        rows.append((f"{label}: {name} p50 / p99", f"{s[name + '_p50_ms']:.1f} / {s[name + '_p99_ms']:.1f} ms"))
    rows.append((f"{label}: host CPU, RSS", f"{s['host_cpu_percent']:.0f}%, {s['host_rss_mb']:.0f} MB"))
    idle = r["idle_rss_mb"]
    rows.append(("idle RSS: host / runner / its keeper", f"{idle['host']:.0f} / {idle['runner']:.0f} / {idle['keeper']:.0f} MB"))
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON document here")
    parser.add_argument("--dir", metavar="FOLDER",
                        help="put the cluster's files here (default: ./hakuriver-bench-data, on disk)")
    parser.add_argument("--tmpfs", action="store_true", help="the cluster's files on /dev/shm instead of on disk")
    parser.add_argument("--loopback", action="store_true",
                        help="every runner on 127.0.0.1 (default as root: each in its own network namespace)")
    parser.add_argument("--history-only", action="store_true",
                        help="run only section g. (the host on a database of 1,000,000 finished tasks)")
    args = parser.parse_args()
    if args.dir and not os.path.isdir(args.dir):
        raise SystemExit(f"bench: --dir {args.dir} is not a folder")
    if shutil.which("true") is None:
        raise SystemExit("bench: /bin/true is needed")
    prof, why = profile(args.loopback)
    result = run(args.quick, args.dir or default_dir(args.tmpfs), prof, why, args.history_only)
    emit(table(result), result, args.json)


if __name__ == "__main__":
    main()
