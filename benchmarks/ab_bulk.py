#!/usr/bin/env python3
"""Two builds side by side: which one runs a bulk batch faster, to about a percent.

The whole-machine rows of bench.py move by several percent from minute to minute on a small VM,
more than most changes do. This starts two local clusters at once, one from each source tree,
and runs the same `--array N --wait` batch on each in turn (A B, B A, A B, ...) while the other
idles, so that the two batches of a pair share the machine's speed of that moment. It prints
each build's median and the paired ratios' median, mean and standard deviation, and the JSON.

    .venv/bin/python benchmarks/ab_bulk.py OLD/src NEW/src [--pairs 30] [--tasks 1000] [--dir FOLDER]

OLD/src and NEW/src are folders that hold a `hakuriver` package (`git worktree add /tmp/old
HEAD~1` gives one at /tmp/old/src); each cluster's processes, and its client, find it first on
PYTHONPATH. Runners on loopback, numactl as bench.py's profile finds it, each cluster's files
in --dir (default /dev/shm). Two builds that are the same code come out within about 1% of
each other with 30 pairs of 1,000 tasks on a 2-CPU VM (standard deviation of a pair 3-4%).
This script itself, and the check that a cluster's runners are online, use the hakuriver
installed with it: builds whose API differs from it cannot be compared this way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import bench  # next to this file (the script's folder is on sys.path)
from bench_cluster import Cluster, profile


def _use(src: str) -> None:
    """What the processes started from now on import: this build first."""
    os.environ["PYTHONPATH"] = os.path.abspath(src)


def compare(builds: dict[str, str], folder: str, pairs: int, tasks: int, warmup: int = 200) -> dict:
    prof = profile(loopback=True)[0]
    rates: dict[str, list[float]] = {name: [] for name in builds}
    with tempfile.TemporaryDirectory(prefix="hakuriver-ab-", dir=folder) as tmp:
        clusters = {}
        try:
            for name, src in builds.items():
                _use(src)
                clusters[name] = Cluster(Path(tmp, name), bench.RUNNERS, os.cpu_count() or 1, prof)
                bench.bulk_round(clusters[name], warmup)
            for i in range(pairs):
                for name in (list(builds) if i % 2 == 0 else list(builds)[::-1]):
                    _use(builds[name])
                    rates[name].append(tasks / bench.bulk_round(clusters[name], tasks)["seconds"])
        finally:
            for cluster in clusters.values():
                cluster.stop()
    ratios = [b / a - 1 for a, b in zip(rates["A"], rates["B"])]
    return {"builds": builds, "tasks": tasks, "pairs": pairs, "per_second": rates,
            "median_per_second": {name: statistics.median(r) for name, r in rates.items()},
            "b_over_a": {"median": statistics.median(ratios), "mean": statistics.mean(ratios),
                         "stdev": statistics.stdev(ratios) if pairs > 1 else 0.0}}


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A_SRC", help="folder holding build A's hakuriver package")
    parser.add_argument("b", metavar="B_SRC", help="folder holding build B's hakuriver package")
    parser.add_argument("--pairs", type=_at_least_one, default=30, help="batches on each build (default 30)")
    parser.add_argument("--tasks", type=_at_least_one, default=1000, help="tasks per batch (default 1000)")
    parser.add_argument("--dir", default="/dev/shm", help="where the two clusters' files go (default /dev/shm)")
    args = parser.parse_args()
    for src in (args.a, args.b):
        if not os.path.isfile(os.path.join(src, "hakuriver", "__init__.py")):
            raise SystemExit(f"ab_bulk: {src} holds no hakuriver package (give the folder that holds it, e.g. src)")
    result = compare({"A": args.a, "B": args.b}, args.dir, args.pairs, args.tasks)
    rel = result["b_over_a"]
    print(f"{args.tasks}-task batches, {args.pairs} pairs: A median {result['median_per_second']['A']:.0f} /s, "
          f"B median {result['median_per_second']['B']:.0f} /s; B against A, per pair: median "
          f"{100 * rel['median']:+.1f}%, mean {100 * rel['mean']:+.1f}%, standard deviation {100 * rel['stdev']:.1f}%")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
