"""The benchmark runs (tiny sizes) and its numbers are well-formed. Nothing about speed is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


def numbers(value) -> list[float]:  # noqa: ANN001
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_quick_benchmark_prints_a_table_and_well_formed_json(tmp_path):
    out = tmp_path / "bench.json"
    # the default, realistic profile (numactl if installed, namespaces as root), its files in tmp_path
    res = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out), "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.startswith("HakuRiver benchmark (quick)")
    data = json.loads(out.read_text())
    assert set(data) >= {"machine", "profile", "spawn_ceiling", "contract_ceiling", "bulk", "cli", "latency",
                         "dashboards", "host_at_scale", "idle_rss_mb", "scale", "host_cpu"}
    assert data["scale"]["nodes"] == 20 and len(data["scale"]["placement"]) == 2
    bulk = data["bulk"][0]
    assert {"ratio_to_ceiling", "ratio_to_contract", "ratio_to_contract_of_run"} <= set(bulk)
    # each bulk round comes right after a round of each ceiling; its ratios are to the best of those
    beside = bulk["ceilings_beside"]
    assert len(beside["contract_per_second_rounds"]) == len(bulk["per_second_rounds"]) == bulk["rounds"]
    assert bulk["ratio_to_contract"] == pytest.approx(bulk["per_second"] / beside["contract_per_second"])
    assert bulk["ratio_to_ceiling"] == pytest.approx(bulk["per_second"] / beside["spawn_per_second"])
    # the run's ceilings are the best of every round: the 3 before the cluster and those beside the batches
    run_contract = data["contract_ceiling"]
    assert run_contract["rounds"] == 3 + bulk["rounds"]
    assert run_contract["per_second"] == max(run_contract["per_second_rounds"]) >= beside["contract_per_second"]
    assert bulk["ratio_to_contract_of_run"] == pytest.approx(bulk["per_second"] / run_contract["per_second"])
    assert {"one_request_median_ms", "cluster_share_ms"} <= set(data["latency"])
    assert data["bulk"][0]["tasks"] == 50 and data["cli"]["tasks"] == 16 and data["latency"]["runs"] == 3
    assert data["host_at_scale"]["simulated_runners"] == 10
    assert data["host_cpu"]["tasks"] == 200 and len(data["host_cpu"]["us_per_task_rounds"]) == 3
    for key in ("submit", "status", "nodes"):
        assert data["host_at_scale"][f"{key}_p50_ms"] <= data["host_at_scale"][f"{key}_p99_ms"]
    # a difference of two medians may come out below zero at this size; it is still a number
    share = data["latency"].pop("cluster_share_ms")
    assert math.isfinite(share)
    values = numbers({k: v for k, v in data.items() if k != "machine"})
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    assert values and not bad, (bad, json.dumps(data)[:3000])
    assert all(b["per_second"] > 0 for b in data["bulk"]) and data["spawn_ceiling"]["per_second"] > 0


def test_the_side_by_side_comparison_runs_and_reports_every_pair(tmp_path):
    """benchmarks/ab_bulk.py with the same build on both sides, tiny: its pairs and its summary are there."""
    src = Path(__file__).resolve().parents[2] / "src"
    res = subprocess.run([sys.executable, str(BENCH.parent / "ab_bulk.py"), str(src), str(src), "--pairs", "2",
                          "--tasks", "20", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.startswith("20-task batches, 2 pairs: A median ")
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert [len(data["per_second"][k]) for k in ("A", "B")] == [2, 2]
    assert all(math.isfinite(v) and v > 0 for k in ("A", "B") for v in data["per_second"][k])
    assert set(data["b_over_a"]) == {"median", "mean", "stdev"}
    wrong = subprocess.run([sys.executable, str(BENCH.parent / "ab_bulk.py"), str(src), str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines() == [
        f"ab_bulk: {tmp_path} holds no hakuriver package (give the folder that holds it, e.g. src)"]
