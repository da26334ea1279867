"""SPEC §10 with real processes: short IDs, names, --list and its filters, --json, --logs through the host."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time

import pytest

from support import program, wait_until, write_toml


def _json(res: subprocess.CompletedProcess) -> object:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # one document: anything else on stdout fails here


def _batch(cluster, *args: str) -> tuple[str, list[str]]:
    doc = _json(cluster.client("--json", *args))
    return doc["batch_id"], doc["task_ids"]


def _wait_batch(cluster, batch_id: str) -> dict:
    return wait_until(lambda: (v := _json(cluster.client("--status", batch_id, "--json")))["done"] and v, 30, "batch done")


def test_short_ids_work_wherever_an_id_does(cluster):
    task_id = _json(cluster.client("--json", "--", "sleep", "30"))["task_id"]
    short = task_id[:8]
    status = _json(cluster.client("--status", short, "--json"))
    assert status["task_id"] == task_id
    res = cluster.client("--kill", short)
    assert res.returncode == 0, res.stderr
    assert cluster.wait_state(task_id, "killed")["state"] == "killed"
    unknown = cluster.client("--status", "00000000")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "no task or batch with ID 00000000" in unknown.stderr


def test_list_filters_names_and_paging(cluster):
    batch_id, ids = _batch(cluster, "--array", "1-3", "--name", "sweep-{}", "--", "sh", "-c", "exit $(($HAKURIVER_ARRAY_INDEX == 2))")
    view = _wait_batch(cluster, batch_id)
    assert view["counts"] == {"completed": 2, "failed": 1}
    [problem] = view["problems"]
    assert (problem["name"], problem["array_index"], problem["exit_code"]) == ("sweep-2", "2", 1)
    assert "(sweep-2) failed exit code 1" in cluster.client("--status", batch_id[:8]).stdout

    page = _json(cluster.client("--list", "--batch", batch_id[:8], "--json"))
    assert [t["name"] for t in page["tasks"]] == ["sweep-3", "sweep-2", "sweep-1"]  # newest first
    assert page["total"] == 3 and {t["task_id"] for t in page["tasks"]} == set(ids)
    assert all(t["owner"] == pwd.getpwuid(os.getuid()).pw_name for t in page["tasks"])

    def names(*flags: str) -> list[str]:
        return [t["name"] for t in _json(cluster.client("--list", "--batch", batch_id, "--json", *flags))["tasks"]]

    assert names("--state", "failed") == ["sweep-2"]
    assert names("--state", "completed,failed") == ["sweep-3", "sweep-2", "sweep-1"]
    assert names("--name", "sweep-[13]") == ["sweep-3", "sweep-1"]
    assert names("--user", "nobody-of-that-name") == []
    node = page["tasks"][0]["node"]
    assert names("--node", node) == [t["name"] for t in page["tasks"] if t["node"] == node]

    text = cluster.client("--list", "--batch", batch_id, "--limit", "2")
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "NODE", "CORES", "EXIT", "SUBMITTED", "RUNTIME"]
    assert [line.split()[:3] for line in lines[1:3]] == [[ids[2][:8], "sweep-3", "completed"], [ids[1][:8], "sweep-2", "failed"]]
    assert lines[3] == "(2 of 3 matching tasks shown; --limit N for more, --limit 0 for all)"


@pytest.mark.parametrize("flags, problem", [
    (["--list", "--state", "sleeping"], "unknown state 'sleeping'"),
    (["--list", "--state", "failed, killed"], None),  # spaces after commas are fine
    (["--progress", "--", "true"], "--progress goes with --wait"),
    (["--status", "12345678", "--progress"], "--progress goes with --wait"),
    (["--list", "--limit", "-1"], "--limit must be a whole number >= 0"),
    (["--state", "running"], "--state goes with --list"),
    (["--tail", "3", "--status", "12345678"], "--tail goes with --logs"),
    (["--name", "", "--", "true"], None),  # an empty name is no name
    (["--name", "x" * 129, "--", "true"], "a name is 1 to 128 printable characters"),
    (["--status", "12345678", "--cores", "2"], "--cores goes with a submission, not with --status"),
    (["--list", "--wait"], "--wait goes with a submission, not with --list"),
    (["--kill", "12345678", "--node", "a"], "--node goes with a submission, not with --kill"),
    (["--list", "--", "true"], "--list takes no command after '--'"),
    (["--list", "--batch", "deadbeef"], "no batch with ID deadbeef"),
])
def test_bad_read_flags_are_one_line_errors(cluster, flags, problem):
    res = cluster.client(*flags)
    if problem is None:
        assert res.returncode == 0, res.stderr
        return
    assert res.returncode in (1, 2) and problem in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert res.returncode == 2 or "no batch" in problem  # a usage error, caught before any request


def test_json_on_every_read_and_submission(cluster):
    done = _json(cluster.client("--json", "--wait", "--name", "hello", "--", "sh", "-c", "echo hi"))
    assert (done["state"], done["name"], done["exit_code"]) == ("completed", "hello", 0)
    status = _json(cluster.client("--status", done["task_id"], "--json"))
    assert status["task_id"] == done["task_id"] and status["cpu_user_seconds"] is not None
    nodes = _json(cluster.client("--list-nodes", "--json"))
    assert {n["name"] for n in nodes} >= {"a", "b"} and all("free_cores" in n for n in nodes)
    log = _json(cluster.client("--logs", done["task_id"][:8], "--json"))
    assert log == {"task_id": done["task_id"], "stream": "stdout", "text": "hi\n", "offset": 3}
    batch = _json(cluster.client("--json", "--wait", "--array", "1-2", "--", "true"))
    assert batch["done"] and batch["counts"] == {"completed": 2}
    sleeper = _json(cluster.client("--json", "--", "sleep", "30"))["task_id"]
    killed = _json(cluster.client("--kill", sleeper[:8], "--json"))
    assert killed["task_id"] == sleeper and "kill" in killed["message"]


def test_kill_of_a_batch_with_json_says_whether_its_tasks_have_ended(cluster):
    """A batch has no one state: "running" while its running tasks end (as a task's is, after --kill),
    "killed" once none is left (its queued tasks end at once)."""
    running = _json(cluster.client("--json", "--array", "1-2", "--", "sleep", "30"))["batch_id"]
    waiting = _json(cluster.client("--json", "--after", running, "--array", "1-2", "--", "true"))["batch_id"]
    assert _json(cluster.client("--kill", waiting, "--json"))["state"] == "killed"
    wait_until(lambda: _json(cluster.client("--status", running, "--json"))["counts"].get("running") == 2, 30,
               "both running")
    reply = _json(cluster.client("--kill", running, "--json"))
    assert (reply["task_id"], reply["state"]) == (running, "running") and "2 unfinished tasks" in reply["message"]
    assert _wait_batch(cluster, running)["counts"] == {"killed": 2}


@pytest.fixture
def far_client(cluster, tmp_path):
    """A client whose config points at another shared folder: it can only read logs through the host."""
    sections = {k: dict(v) for k, v in cluster.base.items()}
    sections["paths"]["shared_dir"] = str(tmp_path / "not-the-shared-folder")
    config = write_toml(tmp_path / "far-client.toml", sections)
    return lambda *args, **kw: cluster.client(*args, config=config, **kw)


def test_logs_are_served_by_the_host(cluster, far_client):
    script = "for i in 1 2 3 4 5; do echo out-$i; echo err-$i >&2; done"
    task_id = cluster.submit("--wait", "--", "sh", "-c", script)
    assert far_client("--logs", task_id).stdout == "".join(f"out-{i}\n" for i in range(1, 6))
    assert far_client("--logs", task_id, "--stderr").stdout == "".join(f"err-{i}\n" for i in range(1, 6))
    assert far_client("--logs", task_id, "--tail", "2").stdout == "out-4\nout-5\n"
    assert far_client("--logs", task_id, "--stderr", "--tail", "1").stdout == "err-5\n"
    assert far_client("--logs", task_id, "--tail", "0").stdout.count("\n") == 5


def test_follow_prints_output_as_it_is_written_and_ends_with_the_task(cluster, far_client, tmp_path):
    gate = tmp_path / "gate"
    task_id = cluster.submit("--", "sh", "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second")
    argv = program("client") + ["--config", str(cluster.config), "--logs", task_id, "--follow"]
    follower = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline() == "first\n"
        assert cluster.task(task_id)["state"] == "running"  # it printed while the task still ran
        gate.touch()
        rest, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert rest == "second\n" and follower.returncode == 0
    assert cluster.task(task_id)["state"] == "completed"


def test_follow_waits_for_a_pending_task_to_start(cluster, tmp_path):
    gate = tmp_path / "gate"
    blockers = [cluster.submit("--node", "b", "--cores", "2", "--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")]
    waiting = cluster.submit("--node", "b", "--cores", "2", "--", "echo", "at last")
    argv = program("client") + ["--config", str(cluster.config), "--logs", waiting, "--follow"]
    follower = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: cluster.task(blockers[0])["state"] == "running", 15, "the blocker to run")
        time.sleep(0.5)  # the follower is now waiting on a pending task
        assert follower.poll() is None and cluster.task(waiting)["state"] == "pending"
        gate.touch()
        out, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert out == "at last\n" and follower.returncode == 0
