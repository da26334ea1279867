"""`hakuriver.client --status ID`."""

from __future__ import annotations

import uuid


def test_status_shows_every_field_of_the_record(cluster):
    waited = cluster.client("--cores", "2", "--env", "K=v w", "--wait", "--", "sh", "-c", "echo hi; exit 4")
    assert waited.returncode == 4
    task_id = waited.stdout.splitlines()[0]
    res = cluster.client("--status", task_id)
    assert res.returncode == 0, res.stderr
    fields = dict(line.split(":", 1) for line in res.stdout.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    row = cluster.task(task_id)
    assert fields["Task ID"] == task_id
    assert fields["State"] == "failed"
    assert fields["Command"] == "sh -c 'echo hi; exit 4'"
    assert fields["Cores"] == "2"
    assert fields["Node"] == row["node"] and fields["Core IDs"] == row["core_ids"]
    assert fields["Exit code"] == "4"
    assert fields["Stdout"] == row["stdout_path"] and fields["Stderr"] == row["stderr_path"]
    assert fields["Environment"] == "K='v w'"
    for key in ("Submitted", "Started", "Finished"):
        assert fields[key].startswith("20"), key


def test_status_of_an_unknown_task_is_one_line(cluster):
    unknown = str(uuid.uuid4())
    res = cluster.client("--status", unknown)
    assert res.returncode == 1
    assert res.stderr.strip() == f"hakuriver.client: error: no task or batch with ID {unknown}"
