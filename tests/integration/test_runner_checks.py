"""The runner refuses to start on a bad node setup, saying which setting is wrong; numactl pinning."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import program, wait_until


def _start(cluster, name: str, **paths: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    config = cluster.runner_config(name, 1, **paths)
    return subprocess.run(program("runner") + ["--config", str(config)], capture_output=True, text=True, timeout=30)


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_missing_shared_dir(cluster, tmp_path):
    line = _one_line(_start(cluster, "x1", shared_dir=str(tmp_path / "nope")))
    assert "[paths] shared_dir" in line and "does not exist" in line


def test_missing_local_temp_dir(cluster, tmp_path):
    config = cluster.runner_config("x2", 1)
    text = config.read_text().replace(str(cluster.root / "tmp-x2"), str(tmp_path / "gone"))
    config.write_text(text)
    res = subprocess.run(program("runner") + ["--config", str(config)], capture_output=True, text=True, timeout=30)
    line = _one_line(res)
    assert "[paths] local_temp_dir" in line and "does not exist" in line


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder this user cannot write: chmod for a normal user, a read-only mount for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    if shutil.which("mount") is None:
        pytest.skip("root without mount(8): cannot make an unwritable folder")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {res.stderr.decode().strip()}")
    return folder


def test_unwritable_shared_dir(cluster, tmp_path):
    folder = _read_only_dir(tmp_path)
    try:
        line = _one_line(_start(cluster, "x3", shared_dir=str(folder)))
        assert "[paths] shared_dir" in line and "not writable" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)])


def test_numactl_path_not_executable(cluster, tmp_path):
    fake = tmp_path / "numactl"
    fake.write_text("not a program")
    line = _one_line(_start(cluster, "x4", numactl_path=str(fake)))
    assert "[paths] numactl_path" in line and "not an executable" in line


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl is not installed (apt-get install numactl)")
def test_numactl_pins_the_task(fresh_cluster):
    c = fresh_cluster
    c.start_host()
    c.start_runner("n", 2, numactl_path=shutil.which("numactl"))
    c.wait_online("n")
    numactl = shutil.which("numactl")
    res = c.client("--cores", "1", "--wait", "--", "sh", "-c", f"grep Cpus_allowed_list /proc/self/status; {numactl} --show")
    assert res.returncode == 0, res.stderr
    row = c.task(res.stdout.splitlines()[0])
    out = Path(row["stdout_path"]).read_text().splitlines()
    assert out[0].split(":")[1].strip() == row["core_ids"]
    # what numactl itself reports inside the task: bound to exactly its core, memory policy untouched
    shown = dict(line.split(":", 1) for line in out[1:] if ":" in line)
    assert shown["physcpubind"].split() == row["core_ids"].split(",")
    assert shown["policy"].strip() == "default"
    # affinity of the runner itself was not what pinned it: the runner left its mask alone
    assert len(os.sched_getaffinity(c.runners["n"].pid)) == os.cpu_count()
    # numactl itself: the keeper made its one affinity call, and the runner said so at start
    assert "binds each task's cores itself" in c.runners["n"].log.read_text()


def test_a_wrapper_at_numactl_path_runs_every_task(fresh_cluster, tmp_path):
    """A site's wrapper is not numactl: it is executed per task with --physcpubind=<the task's cores>."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "site-numactl"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nshift\nexec "$@"\n')
    wrapper.chmod(0o755)
    c = fresh_cluster
    c.start_host()
    c.start_runner("n", 2, numactl_path=str(wrapper))
    c.wait_online("n")
    rows = []
    for cores in ("1", "2", "1"):
        res = c.client("--cores", cores, "--wait", "--", "true")
        assert res.returncode == 0, res.stderr
        rows.append(c.task(res.stdout.splitlines()[0]))
    assert calls.read_text().splitlines() == [f"--physcpubind={row['core_ids']}" for row in rows]


def test_a_second_runner_under_an_online_nodes_name_is_refused_and_runs_nothing(cluster):
    """Two runners with one node_name (a copied config) must not split that node's tasks."""
    dup = cluster.start_runner("a-dup", 1, node_name="a")
    log = cluster.root / "runner-a-dup.log"
    try:
        wait_until(lambda: "node a is served by another runner" in log.read_text(), 20, f"the refusal in {log}")
        ids = [cluster.submit("--node", "a", "--wait", "--", "sh", "-c", "echo $HAKURIVER_LOCAL_TEMP_DIR") for _ in range(4)]
        ran_in = {cluster.client("--logs", task_id).stdout for task_id in ids}
        assert all(str(cluster.root / "tmp-a" / "") in text for text in ran_in), ran_in  # all on the first runner
        assert dup.alive()  # it keeps asking, so that it can take over once the first runner is gone for good
        assert cluster.nodes()["a"]["core_ids"] == "0,1,2,3"  # the node kept its own runner's cores
    finally:
        dup.stop()
