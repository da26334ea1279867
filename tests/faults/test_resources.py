"""Resource faults make the task fail with a reason; the runner stays up and serves the next task."""

from __future__ import annotations

import os
import subprocess

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny or read-only tmpfs")


def mount_tmpfs(path, options: str) -> None:  # noqa: ANN001
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {res.stderr.strip()}")


@needs_root
def test_unwritable_output_folder_at_task_start(cluster):
    cluster.start_host()
    cluster.start_runner("a", 1)
    cluster.wait_online("a")
    outputs = cluster.shared / "task_outputs"
    mount_tmpfs(outputs, "ro,size=1m")
    try:
        res = cluster.client("--wait", "--", "echo", "hi")
        assert res.returncode == 1
        row = cluster.task(res.stdout.splitlines()[0])
        assert row["state"] == "failed"
        assert f"cannot write the task's output under {outputs}: Read-only file system" in row["error"]
    finally:
        subprocess.run(["umount", str(outputs)])
    assert cluster.runners["a"].alive()
    assert cluster.client("--wait", "--", "true").returncode == 0


@needs_root
def test_full_local_temp_disk(cluster):
    scratch = cluster.root / "tmp-a"
    mount_tmpfs(scratch, "size=2m")
    try:
        cluster.start_host()
        cluster.start_runner("a", 1)
        cluster.wait_online("a")
        filler = scratch / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        res = cluster.client("--wait", "--", "true")
        assert res.returncode == 1
        row = cluster.task(res.stdout.splitlines()[0])
        assert row["state"] == "failed" and f"local_temp_dir {scratch} is full" in row["error"]
        assert cluster.runners["a"].alive()
        filler.unlink()
        assert cluster.client("--wait", "--", "true").returncode == 0
    finally:
        cluster.shutdown()
        subprocess.run(["umount", str(scratch)])


def test_missing_command(cluster):
    cluster.start_host()
    cluster.start_runner("a", 1)
    cluster.wait_online("a")
    res = cluster.client("--wait", "--", "/no/such/program", "x")
    row = cluster.task(res.stdout.splitlines()[0])
    assert row["state"] == "failed" and row["error"] == "command not found: /no/such/program"
    assert cluster.runners["a"].alive()
    assert cluster.client("--wait", "--", "true").returncode == 0
