"""Records live in SQLite, are committed before the client sees an ID, and survive a host restart."""

from __future__ import annotations

import signal


def test_records_and_queue_survive_a_host_restart(fresh_cluster):
    c = fresh_cluster
    assert not c.db_file.parent.exists()  # the host creates the database folder
    c.start_host()
    c.start_runner("a", 1)
    c.wait_online("a")
    done = c.submit("--wait", "--", "sh", "-c", "echo before")
    blocker = c.submit("--", "sleep", "3")
    c.wait_state(blocker, "running")
    queued = [c.submit("--", "sh", "-c", f"echo queued {i}") for i in range(3)]
    # committed before the IDs were printed: visible to another reader right away
    assert [c.task(t)["state"] for t in queued] == ["pending"] * 3
    c.host.stop(signal.SIGKILL)
    c.start_host()
    assert c.task(done)["state"] == "completed"
    for i, t in enumerate(queued):
        row = c.wait_state(t, "completed", timeout=30)
        assert open(row["stdout_path"]).read() == f"queued {i}\n"
    res = c.client("--status", done)
    assert res.returncode == 0 and "completed" in res.stdout
    assert c.wait_state(blocker, "completed", timeout=30)["exit_code"] == 0
