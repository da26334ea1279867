"""Kill at awkward moments: one clear final state, and no process left behind."""

from __future__ import annotations

import signal

from hakuriver import protocol as p
from hakuriver.client.api import ApiError
from support import wait_until

FINAL = ("completed", "failed", "killed")


def test_kill_right_after_submit(cluster):
    cluster.start_host()
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    client = cluster.api()
    ids = []
    for _ in range(10):
        [task_id] = client.submit([p.TaskSpec("sleep", ["30"])]).task_ids
        client.kill(task_id)  # pending, assigning or just started: whichever it is
        ids.append(task_id)
    for t in ids:
        assert cluster.wait_state(t, "killed")["state"] == "killed"
    wait_until(lambda: not cluster.task_processes(), 15, "no task process left")


def test_kill_as_the_task_finishes(cluster):
    cluster.start_host()
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    client = cluster.api()
    outcomes = []
    for _ in range(10):
        [task_id] = client.submit([p.TaskSpec("sh", ["-c", "exit 0"])]).task_ids
        try:
            client.kill(task_id)
        except ApiError as exc:
            assert exc.status == 409 and "already finished (completed)" in str(exc)
        outcomes.append(cluster.wait_state(task_id, *FINAL)["state"])
    assert set(outcomes) <= {"completed", "killed"}
    wait_until(lambda: not cluster.task_processes(), 15, "no task process left")


def test_kill_while_the_node_is_unreachable(cluster):
    cluster.start_host()
    runner = cluster.start_runner("a", 1)
    cluster.wait_online("a")
    task_id = cluster.submit("--", "sleep", "60")
    cluster.wait_state(task_id, "running")
    procs = cluster.task_processes()  # sleep itself: the keeper starts the command with no wrapper
    assert [proc.name() for proc in procs] == ["sleep"]
    runner.signal(signal.SIGSTOP)
    try:
        assert cluster.client("--kill", task_id).returncode == 0
        row = cluster.wait_state(task_id, "killed", timeout=20)  # once the node is declared offline
        assert "killed by user" in row["error"]
        assert all(proc.is_running() for proc in procs)  # nobody could reach them yet
    finally:
        runner.signal(signal.SIGCONT)
    wait_until(lambda: not cluster.task_processes(), 20, "the processes to be killed when the node returns")
    assert cluster.task(task_id)["state"] == "killed"
