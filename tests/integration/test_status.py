"""`hakuriver.client --status ID`."""

from __future__ import annotations

import json
import subprocess
import uuid

from support import program, wait_until


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


def test_status_wait_waits_for_a_task_or_batch_submitted_earlier(cluster):
    task_id = cluster.client("--", "sh", "-c", "sleep 1; exit 3").stdout.strip()
    assert cluster.task(task_id)["finished_at"] is None  # still to run when the wait starts
    res = cluster.client("--status", task_id[:8], "--wait")
    assert res.returncode == 3, res.stderr  # the task's own exit code, as with a submission's --wait
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in res.stdout.splitlines())}
    assert fields["State"] == "failed" and fields["Exit code"] == "3"
    assert cluster.task(task_id)["state"] == "failed"

    batch_id = cluster.client("--array", "1-3", "--", "sh", "-c", "sleep 1; [ {} -ne 2 ]").stdout.strip()
    res = cluster.client("--status", batch_id, "--wait", "--json")
    assert res.returncode == 1, res.stderr  # one task of the batch did not complete
    view = json.loads(res.stdout)
    assert view["done"] and view["counts"] == {"completed": 2, "failed": 1}
    done = cluster.client("--status", batch_id, "--wait")  # already done: answers at once, same exit code
    assert done.returncode == 1 and "failed" in done.stdout


def test_stopping_the_host_under_open_long_polls_logs_no_error(fresh_cluster):
    c = fresh_cluster
    c.start_host()
    c.start_runner("a", 1)
    c.wait_online("a")
    task_id = c.submit("--", "sleep", "30")
    waiting = subprocess.Popen(program("client") + ["--config", str(c.config), "--status", task_id, "--wait"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: c.task(task_id)["state"] == "running", 20, "the task to run")
        c.host.stop()  # the runner's heartbeat and the client's wait are long-polls still open
    finally:
        waiting.kill()
        waiting.wait()
    text = (c.root / "host.log").read_text()
    assert " ERROR" not in text and "ERROR:" not in text, text
    assert "long-polls (waiting runners and clients) cut short" in text  # the stop did meet them
