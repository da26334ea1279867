"""`hakuriver.client --list-nodes`."""

from __future__ import annotations


def test_list_nodes_shows_every_runner_by_its_configured_name(cluster):
    res = cluster.client("--list-nodes")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split()[:5] == ["NODE", "STATE", "CORES", "FREE", "RUNNING"]
    table = {r.split()[0]: r.split() for r in rows}
    assert set(table) == {"a", "b"}
    assert table["a"][1:3] == ["online", "4"]
    assert table["b"][1:3] == ["online", "2"]
    assert "ago" in rows[0]  # last heartbeat column
    db = cluster.nodes()
    assert db["a"]["core_ids"] == "0,1,2,3" and db["b"]["state"] == "online"
