"""The host killed with SIGKILL: every accepted task survives, results come back, runners reconnect."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from hakuriver import protocol as p
from hakuriver.client.api import ApiError, HostUnreachable
from hakuriver.runner.journal import Journal
from support import wait_until


def test_results_of_tasks_that_finished_while_the_host_was_down(cluster):
    cluster.start_host()
    cluster.start_runner("a", 1)
    cluster.wait_online("a")
    gate = cluster.shared / "gate"
    running = cluster.submit("--", "sh", "-c", f'while [ ! -e {gate} ]; do sleep 0.05; done; echo done; exit 5')
    queued = [cluster.submit("--", "sh", "-c", f"echo q{i}") for i in range(3)]
    cluster.wait_state(running, "running")
    cluster.host.stop(signal.SIGKILL)
    gate.touch()
    journal = str(cluster.root / "tmp-a" / ".hakuriver-runner-a" / "journal")

    def undelivered() -> set[str]:
        return set(Journal.peek(journal)[1])

    wait_until(lambda: running in undelivered(), 10, "the result kept in the runner's journal")
    assert cluster.runners["a"].alive()
    cluster.start_host()
    row = cluster.wait_state(running, "failed", timeout=30)
    assert row["exit_code"] == 5 and Path(row["stdout_path"]).read_text() == "done\n"
    wait_until(lambda: running not in undelivered(), 10, "the result to leave the journal once acknowledged")
    for i, t in enumerate(queued):
        assert Path(cluster.wait_state(t, "completed", timeout=30)["stdout_path"]).read_text() == f"q{i}\n"
    cluster.wait_online("a")


def test_no_accepted_submission_is_lost_across_a_host_crash(cluster):
    cluster.start_host()
    cluster.start_runner("a", 2)
    cluster.wait_online("a")
    accepted: list[str] = []
    refused = 0
    stop = threading.Event()

    def submit_loop() -> None:
        nonlocal refused
        client = cluster.api(timeout=5)
        deadline = time.monotonic() + 60
        for _ in range(400):  # bounded in count and in time
            if stop.is_set() or time.monotonic() > deadline:
                break
            try:
                accepted.extend(client.submit([p.TaskSpec("true")]).task_ids)
            except (HostUnreachable, ApiError):
                refused += 1
                time.sleep(0.02)

    loop = threading.Thread(target=submit_loop)
    loop.start()
    wait_until(lambda: len(accepted) >= 30, 30, "30 accepted submissions")
    cluster.host.stop(signal.SIGKILL)
    at_crash = len(accepted)
    wait_until(lambda: refused >= 3, 30, "submissions refused while the host is down")
    cluster.start_host()
    wait_until(lambda: len(accepted) >= at_crash + 30, 30, "30 more accepted after the restart")
    stop.set()
    loop.join(60)
    ids = {r["task_id"] for r in cluster.query("SELECT task_id FROM tasks")}
    assert set(accepted) <= ids, f"{len(set(accepted) - ids)} accepted tasks are missing"
    for t in accepted:
        cluster.wait_state(t, "completed", timeout=60)
