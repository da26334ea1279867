"""Records live in SQLite, are committed before the client sees an ID, and survive a host restart."""

from __future__ import annotations

import signal
from pathlib import Path


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


def test_a_host_upgraded_over_a_database_of_release_825ccee_serves_every_record(fresh_cluster):
    """The real host, on a copy of a database that release 825ccee wrote: every record through the client."""
    import json
    import shutil

    fixtures = Path(__file__).parent.parent / "fixtures"
    expected = json.loads((fixtures / "db_825ccee.expected.json").read_text())["tasks"]
    cluster = fresh_cluster
    cluster.db_file.parent.mkdir(parents=True)
    shutil.copy(fixtures / "db_825ccee.sqlite", cluster.db_file)
    cluster.start_host()
    listed = json.loads(cluster.client("--list", "--limit", "0", "--json").stdout)
    assert listed["total"] == len(expected) and {t["task_id"] for t in listed["tasks"]} == set(expected)
    for task_id, row in expected.items():
        if row["state"] in ("completed", "failed", "killed"):  # final: exactly as that release left them
            res = cluster.client("--status", task_id[:8], "--json")
            assert res.returncode == 0, res.stderr
            record = json.loads(res.stdout)
            assert (record["state"], record["exit_code"], record["stdout_path"]) == (
                row["state"], row["exit_code"], row["stdout_path"])
    batch = next(row["batch_id"] for row in expected.values() if row["batch_id"])
    assert json.loads(cluster.client("--status", batch, "--json").stdout)["counts"] == {"completed": 5}
