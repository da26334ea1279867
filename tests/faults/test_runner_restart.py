"""A runner killed (SIGKILL) or stopped for an upgrade (SIGTERM) loses no task and no result."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from support import wait_until

# Runs until its gate file appears, counting its runs, then exits with a chosen code.
GATED = 'echo run >> "$HAKURIVER_SHARED_DIR/$HAKURIVER_TASK_ID.runs"; ' \
        'while [ ! -e "$HAKURIVER_SHARED_DIR/$0" ]; do sleep 0.05; done; echo "out $0"; exit "$1"'


def gated(cluster, gate: str, code: int, *extra: str) -> str:  # noqa: ANN001
    return cluster.submit(*extra, "--", "sh", "-c", GATED, gate, str(code))


def runs(cluster, task_id: str) -> int:  # noqa: ANN001
    path = Path(cluster.shared, f"{task_id}.runs")
    return len(path.read_text().splitlines()) if path.exists() else 0


def open_gate(cluster, gate: str) -> None:  # noqa: ANN001
    (cluster.shared / gate).touch()


def session_leaders(cluster) -> set[str]:  # noqa: ANN001
    """The task IDs of the tasks' first processes (a gate loop's short-lived `sleep`s may vanish while we look)."""
    found = set()
    for proc in cluster.task_processes():
        try:
            if proc.pid == os.getsid(proc.pid):
                found.add(proc.environ()["HAKURIVER_TASK_ID"])
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "upgrade"])
def test_tasks_outlive_their_runner_and_report_real_exit_codes(cluster, sig):
    cluster.start_host()
    cluster.start_runner("a", 3)
    cluster.wait_online("a")
    early = gated(cluster, "g-early", 3)   # finishes while the runner is down
    late = gated(cluster, "g-late", 0)     # finishes after the new runner is up
    killed_later = gated(cluster, "g-never", 0)
    for t in (early, late, killed_later):
        cluster.wait_state(t, "running")
    cluster.runners["a"].stop(sig)
    alive = session_leaders(cluster)
    assert alive == {early, late, killed_later}  # the tasks were not touched
    open_gate(cluster, "g-early")
    exits_log = cluster.root / "tmp-a" / ".hakuriver-runner-a" / "exits"
    wait_until(lambda: exits_log.exists() and early in exits_log.read_text(), 10,
               "the early task's exit status in the keeper's log on local disk")
    cluster.start_runner("a", 3)
    cluster.wait_online("a")
    row = cluster.wait_state(early, "failed")
    assert row["exit_code"] == 3 and Path(row["stdout_path"]).read_text() == "out g-early\n"
    open_gate(cluster, "g-late")
    row = cluster.wait_state(late, "completed")
    assert row["exit_code"] == 0
    # the re-adopted task can still be killed, whole tree and all
    assert cluster.client("--kill", killed_later).returncode == 0
    cluster.wait_state(killed_later, "killed")
    assert [runs(cluster, t) for t in (early, late, killed_later)] == [1, 1, 1]
    wait_until(lambda: not cluster.task_processes(), 10, "no task process left")


def test_runner_started_before_the_host_waits_and_retries_without_spinning(cluster):
    import socket
    import threading

    # Something that accepts and hangs up stands where the host will be: every heartbeat attempt
    # is one connection, so spinning would show as thousands of them.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", cluster.port))
    listener.listen(64)
    listener.settimeout(0.2)
    attempts = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal attempts
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            attempts += 1
            conn.close()

    counter = threading.Thread(target=count)
    counter.start()
    runner = cluster.start_runner("early", 1)
    wait_until(lambda: attempts >= 8, 30, "eight heartbeat attempts")
    seen = attempts
    stop.set()
    counter.join()
    listener.close()
    assert runner.alive()
    # backoff: 0.1 s doubling to a ceiling of max(1 s, heartbeat interval); 8 attempts take over 2 s.
    assert seen < 100
    cluster.start_host()
    cluster.wait_online("early")
    assert cluster.submit("--wait", "--", "true")
