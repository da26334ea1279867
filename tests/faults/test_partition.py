"""Runners in their own network namespaces (own IP, own hostname); their links cut and healed."""

from __future__ import annotations

import time
from pathlib import Path

from support import start_namespaced, wait_until

GATED = 'echo run >> "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.runs"; ' \
        'while [ ! -e "$HAKURIVER_SHARED_DIR/$0" ]; do sleep 0.05; done; exit "$1"'


def submit_gated(cluster, node: str, gate: str, code: int) -> str:  # noqa: ANN001
    return cluster.submit("--node", node, "--", "sh", "-c", GATED, gate, str(code))


def runs(cluster, task_id: str) -> int:  # noqa: ANN001
    return len(Path(cluster.shared, f"{task_id}.runs").read_text().splitlines())


def test_hosts_have_their_own_address_and_hostname(slow_cluster, netlab):
    start_namespaced(slow_cluster, netlab, "a")
    res = slow_cluster.client("--node", "host-a", "--wait", "--", "sh", "-c", "hostname; ip -4 -o addr show")
    assert res.returncode == 0, res.stderr
    out = Path(slow_cluster.task(res.stdout.splitlines()[0])["stdout_path"]).read_text()
    assert out.splitlines()[0] == "host-a"
    assert netlab.hosts["a"][2] in out


def test_a_cut_shorter_than_the_timeout_changes_nothing(slow_cluster, netlab):
    c = slow_cluster
    start_namespaced(c, netlab, "a")
    task = submit_gated(c, "host-a", "gate", 4)
    c.wait_state(task, "running")
    netlab.cut("a")
    time.sleep(1.0)  # the cut itself: a quarter of the 4 s heartbeat timeout
    assert c.task(task)["state"] == "running" and c.nodes()["host-a"]["state"] == "online"
    netlab.heal("a")
    (c.shared / "gate").touch()
    row = c.wait_state(task, "failed", "completed")
    assert row["exit_code"] == 4 and runs(c, task) == 1
    assert "host-a is offline" not in (c.root / "host.log").read_text()


def test_a_long_cut_marks_lost_and_healing_brings_back_the_real_outcomes(cluster, netlab):
    c = cluster
    start_namespaced(c, netlab, "a", "b")
    still_running = submit_gated(c, "host-b", "gate-1", 0)
    finishes_during_cut = submit_gated(c, "host-b", "gate-2", 9)
    for t in (still_running, finishes_during_cut):
        c.wait_state(t, "running")
    netlab.cut("b")
    wait_until(lambda: c.nodes()["host-b"]["state"] == "offline", 20, "host-b offline")
    for t in (still_running, finishes_during_cut):
        assert c.wait_state(t, "lost")["error"].startswith("node host-b stopped answering")
    (c.shared / "gate-2").touch()  # finishes while nobody can hear about it
    elsewhere = c.submit("--wait", "--", "true")
    assert c.task(elsewhere)["node"] == "host-a"
    netlab.heal("b")
    wait_until(lambda: c.nodes()["host-b"]["state"] == "online", 30, "host-b back online")
    row = c.wait_state(finishes_during_cut, "failed", timeout=30)
    assert row["exit_code"] == 9
    c.wait_state(still_running, "running", timeout=30)
    (c.shared / "gate-1").touch()
    assert c.wait_state(still_running, "completed")["exit_code"] == 0
    assert runs(c, still_running) == 1 and runs(c, finishes_during_cut) == 1
