"""`hakuriver.client --kill ID`: the whole process tree ends, SIGKILL after the grace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil

from support import program, wait_until

# A task that ignores SIGTERM and starts a grandchild in its own process group, which also
# ignores it: only SIGKILL to the whole tree ends them.
STUBBORN = (
    'trap "" TERM; '
    'setsid sh -c \'trap "" TERM; echo $$ > "$0"; exec sleep 300\' "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.gc" & '
    'echo $$ > "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.pid"; sleep 300; wait'
)


def _pid(cluster, task_id: str, suffix: str) -> int:  # noqa: ANN001
    path = Path(cluster.shared, f"{task_id}.{suffix}")
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), 20, f"{path}"))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_ends_a_term_ignoring_tree(cluster):
    task_id = cluster.submit("--cores", "1", "--", "sh", "-c", STUBBORN)
    cluster.wait_state(task_id, "running")
    pid, grandchild = _pid(cluster, task_id, "pid"), _pid(cluster, task_id, "gc")
    res = cluster.client("--kill", task_id)
    assert res.returncode == 0, res.stderr
    assert task_id in res.stdout
    row = cluster.wait_state(task_id, "killed")
    assert row["finished_at"] is not None
    assert _gone(pid) and _gone(grandchild)
    assert os.getpgid(os.getpid())  # the test process itself is untouched


def test_kill_of_a_pending_task_never_starts_it(cluster):
    # fill node b (2 cores), then queue one more for b only
    blockers = [cluster.submit("--node", "b", "--", "sleep", "30") for _ in range(2)]
    for b in blockers:
        cluster.wait_state(b, "running")
    queued = cluster.submit("--node", "b", "--", "sh", "-c", "echo ran")
    assert cluster.task(queued)["state"] == "pending"
    res = cluster.client("--kill", queued)
    assert res.returncode == 0 and "killed" in res.stdout
    row = cluster.task(queued)
    assert row["state"] == "killed" and row["started_at"] is None and row["node"] == ""
    for b in blockers:
        cluster.client("--kill", b)
        cluster.wait_state(b, "killed")


def test_kill_of_a_finished_task_is_refused_in_one_line(cluster):
    task_id = cluster.submit("--wait", "--", "true")
    res = cluster.client("--kill", task_id)
    assert res.returncode == 1
    assert res.stderr.strip() == f"hakuriver.client: error: task {task_id} has already finished (completed); nothing to kill"
    assert cluster.task(task_id)["state"] == "completed"


def test_wait_on_a_killed_task_exits_143(cluster):
    waiter = subprocess.Popen(program("client") + ["--config", str(cluster.config), "--wait", "--", "sleep", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    task_id = waiter.stdout.readline().strip()
    cluster.wait_state(task_id, "running")
    assert cluster.client("--kill", task_id).returncode == 0
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 143, err
    assert f"task {task_id} killed" in out
