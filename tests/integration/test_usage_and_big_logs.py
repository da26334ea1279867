"""What a finished task used (CPU time, peak memory, efficiency), and a log far bigger than memory, with real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import psutil

from support import program

GIB = 10**9
MIB = 2**20


def _status(cluster, task_id: str) -> dict:
    res = cluster.client("--status", task_id, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_peak_memory_of_a_task_is_measured(cluster):
    hold = "import time; x = b'x' * (300 * 2**20); time.sleep(0.2)"
    task_id = cluster.submit("--wait", "--", sys.executable, "-c", hold)
    record = _status(cluster, task_id)
    assert record["state"] == "completed"
    assert record["max_rss_bytes"] >= 300 * MIB
    assert cluster.task(task_id)["max_rss_bytes"] == record["max_rss_bytes"]  # stored, not computed on the fly
    text = cluster.client("--status", task_id).stdout
    assert "Peak memory:" in text and "MiB" in text


def test_efficiency_and_the_right_sizing_hint(cluster):
    spin = "import time\nt = time.time()\nwhile time.time() - t < 2: pass"
    task_id = cluster.submit("--wait", "--cores", "4", "--", sys.executable, "-c", spin)
    record = _status(cluster, task_id)
    cpu = record["cpu_user_seconds"] + record["cpu_system_seconds"]
    wall = record["finished_at"] - record["started_at"]
    efficiency = cpu / (wall * 4)
    assert 0.10 <= efficiency <= 0.30, efficiency  # one busy core of four: about 25%
    text = cluster.client("--status", task_id).stdout
    [line] = [x for x in text.splitlines() if x.startswith("CPU efficiency:")]
    assert f"{efficiency:.0%}" in line and "of 4 cores on average" in line and "--cores 1 would do" in line


def test_a_one_core_task_gets_no_hint(cluster):
    task_id = cluster.submit("--wait", "--", "sleep", "0.3")
    text = cluster.client("--status", task_id).stdout
    assert "CPU efficiency:" in text and "would do" not in text


def test_a_gigabyte_log_streams_through_the_host_in_bounded_memory(cluster):
    # a sparse 1 GB stdout: costs no disk, but the host reads and sends every byte of it
    task_id = cluster.submit("--wait", "--", sys.executable, "-c", f"import os; os.ftruncate(1, {GIB})")
    host = psutil.Process(cluster.host.pid)
    base = host.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], host.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    argv = program("client") + ["--config", str(cluster.config), "--logs", task_id]
    reader = subprocess.Popen(argv, stdout=subprocess.PIPE)
    received = 0
    try:
        while piece := reader.stdout.read(4 * MIB):
            received += len(piece)
        assert reader.wait(timeout=120) == 0
    finally:
        reader.kill()
        done.set()
        sampler.join()
    assert received == GIB
    assert peak[0] - base < 50 * MIB, f"host RSS grew by {(peak[0] - base) / MIB:.1f} MiB"
