"""A node without heartbeats goes offline, its running tasks become lost, queued work moves on."""

from __future__ import annotations

import json
import signal


def test_silent_node_goes_offline_and_its_tasks_are_lost(fresh_cluster):
    c = fresh_cluster
    c.start_host()
    c.start_runner("a", 1)
    c.start_runner("b", 1)
    c.wait_online("a", "b")
    on_b = c.submit("--node", "b", "--", "sleep", "60")
    c.wait_state(on_b, "running")
    c.runners["b"].signal(signal.SIGSTOP)  # frozen: no heartbeats, no reports
    try:
        row = c.wait_state(on_b, "lost", timeout=20)
        assert "node b stopped answering" in row["error"]
        assert c.nodes()["b"]["state"] == "offline"
        listing = c.client("--list-nodes").stdout
        assert any(line.split()[:2] == ["b", "offline"] for line in listing.splitlines())
        # queued work goes to the node that still answers
        queued = [c.submit("--", "true") for _ in range(3)]
        for t in queued:
            assert c.wait_state(t, "completed")["node"] == "a"
    finally:
        c.runners["b"].signal(signal.SIGCONT)


def test_a_runner_that_stops_is_sent_nothing_new_and_its_task_runs_on(fresh_cluster):
    """A runner stopped cleanly (an upgrade, a mistake) tells the host: new work goes to the other
    nodes at once instead of waiting out the heartbeat timeout, and its running task runs on."""
    c = fresh_cluster
    c.start_host()
    c.start_runner("big", 4)
    c.start_runner("small", 2)  # best fit prefers its free core for one-core tasks
    c.wait_online("big", "small")
    on_small = c.submit("--node", "small", "--", "sleep", "3")
    c.wait_state(on_small, "running")
    c.runners["small"].stop()
    assert "could not tell the host" not in (c.root / "runner-small.log").read_text()
    listed = {n["name"]: n for n in json.loads(c.client("--list-nodes", "--json").stdout)}
    assert listed["small"]["leaving"] and not listed["big"]["leaving"]  # (online until its heartbeats time out)
    assert any(line.split()[:2] == ["small", "leaving"] for line in c.client("--list-nodes").stdout.splitlines())
    for _ in range(3):  # at once: without being told, the host would send them to small until it gave it up
        res = c.client("--wait", "--", "true", timeout=15)
        assert res.returncode == 0 and " on big " in res.stdout, res.stdout + res.stderr
    c.start_runner("small", 2)  # a runner back: it takes the task over, and the node gets work again
    assert c.wait_state(on_small, "completed", timeout=20)["node"] == "small"
    assert " on small " in c.client("--node", "small", "--wait", "--", "true", timeout=15).stdout
