"""`hakuriver.client --list-nodes`."""

from __future__ import annotations

import shlex
import subprocess

from support import program


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


def test_output_that_cannot_be_written_is_one_line_and_exit_1_and_a_reader_gone_is_141(cluster):
    """What the client prints goes to a full disk, or to a reader that is gone."""
    argv = program("client") + ["--config", str(cluster.config), "--list-nodes"]
    with open("/dev/full", "w") as full:
        res = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.splitlines() == ["hakuriver.client: error: cannot write the output: No space left on device"]
    shell = subprocess.run(["bash", "-c", " ".join(shlex.quote(a) for a in argv)
                            + " | (exec 0<&-; sleep 0.5); echo ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=60)
    assert shell.stdout.split() == ["141"] and "Traceback" not in shell.stderr
