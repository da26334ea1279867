"""A node without heartbeats goes offline, its running tasks become lost, queued work moves on."""

from __future__ import annotations

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
