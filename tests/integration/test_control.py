"""SPEC §11 with real processes: time limits, retries and attempts, --after, throttles, --retry-failed, why pending."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from support import wait_until, write_toml

#: a task that counts its runs in a file of the shared folder and succeeds on the third
THIRD_TIME_LUCKY = 'f="$HAKURIVER_SHARED_DIR/$0"; n=$(( $(cat "$f" 2>/dev/null || echo 0) + 1 )); echo $n > "$f"; ' \
                   'echo "run $n attempt $HAKURIVER_ATTEMPT"; [ $n -ge 3 ]'
#: a task that runs until a file named by its first argument appears in the shared folder
GATED = 'while [ ! -e "$HAKURIVER_SHARED_DIR/$0" ]; do sleep 0.05; done'


def _json(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _status(cluster, some_id: str) -> dict:  # noqa: ANN001
    return _json(cluster.client("--status", some_id, "--json"))


def _open(cluster, gate: str) -> None:  # noqa: ANN001
    Path(cluster.shared, gate).touch()


def _one_line_error(res: subprocess.CompletedProcess, text: str) -> None:
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1 and text in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# ---- time limits ---------------------------------------------------------------------------
def test_a_task_past_its_time_limit_ends_timeout_and_wait_exits_124(cluster):
    res = cluster.client("--time-limit", "1s", "--wait", "--", "sleep", "30", timeout=60)
    assert res.returncode == 124, res.stderr
    row = cluster.task(res.stdout.splitlines()[0])
    assert row["state"] == "timeout" and row["time_limit"] == 1.0
    assert "time limit of 1s reached" in row["error"]
    assert 1.0 <= row["finished_at"] - row["started_at"] < 20  # about the limit, not the 30 s of sleep


def test_a_task_that_ignores_sigterm_is_killed_after_kill_grace(cluster, tmp_path):
    pid_file = tmp_path / "pid"
    script = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    task_id = cluster.submit("--time-limit", "0:01", "--", "python3", "-c", script)
    row = cluster.wait_state(task_id, "timeout", timeout=30)
    assert "time limit of 1s reached" in row["error"]
    assert not psutil.pid_exists(int(pid_file.read_text())) or \
        psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                           ("1:30:00", 5400)])
def test_every_time_limit_form_is_recorded_in_seconds(cluster, text, seconds):
    task_id = cluster.submit("--time-limit", text, "--", "true")
    assert _status(cluster, task_id)["time_limit"] == seconds
    cluster.wait_state(task_id, "completed")


def test_a_malformed_time_limit_is_refused_in_one_line(cluster):
    _one_line_error(cluster.client("--time-limit", "soon", "--", "true"), "--time-limit")


def test_the_default_time_limit_applies_when_none_is_given(fresh_cluster):
    c = fresh_cluster
    write_toml(c.config, {**c.base, "tasks": {"default_time_limit": "1"}})
    c.start_host()
    c.start_runner("a", 2)
    c.wait_online("a")
    res = c.client("--wait", "--", "sleep", "30", timeout=60)
    assert res.returncode == 124, res.stderr
    assert c.task(res.stdout.splitlines()[0])["time_limit"] == 1.0
    assert c.task(c.submit("--time-limit", "1h", "--", "true"))["time_limit"] == 3600


# ---- retries and attempts ------------------------------------------------------------------
def test_a_task_that_fails_twice_then_succeeds_keeps_every_attempt(cluster, tmp_path):
    counter = f"count-{tmp_path.name}"
    res = cluster.client("--retries", "2", "--wait", "--", "sh", "-c", THIRD_TIME_LUCKY, counter, timeout=60)
    assert res.returncode == 0, res.stderr
    task_id = res.stdout.splitlines()[0]
    view = _status(cluster, task_id)
    assert (view["state"], view["attempt"], view["retries"]) == ("completed", 3, 2)
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in view["attempts"]] == [
        (1, "failed", 1), (2, "failed", 1), (3, "completed", 0)]
    outputs = [Path(a["stdout_path"]).read_text() for a in view["attempts"]]
    assert outputs == ["run 1 attempt 1\n", "run 2 attempt 2\n", "run 3 attempt 3\n"]
    assert view["attempts"][0]["stdout_path"].endswith(f"{task_id}.1.out")
    assert view["attempts"][2]["stdout_path"].endswith(f"{task_id}.out")
    assert "Attempts (3):" in cluster.client("--status", task_id).stdout
    row = cluster.task(task_id)
    assert row["attempt"] == 3 and len(json.loads(row["attempts"])) == 2


def test_without_retries_a_failed_task_runs_once(cluster, tmp_path):
    counter = f"count-{tmp_path.name}"
    res = cluster.client("--wait", "--", "sh", "-c", THIRD_TIME_LUCKY, counter, timeout=60)
    assert res.returncode == 1
    view = _status(cluster, res.stdout.splitlines()[0])
    assert (view["state"], view["attempt"], len(view["attempts"])) == ("failed", 1, 1)
    assert Path(cluster.shared, counter).read_text() == "1\n"


def test_retries_run_out_and_the_last_attempt_decides(cluster):
    res = cluster.client("--retries", "1", "--wait", "--", "sh", "-c", "exit 7", timeout=60)
    assert res.returncode == 7
    view = _status(cluster, res.stdout.splitlines()[0])
    assert [(a["attempt"], a["state"], a["exit_code"]) for a in view["attempts"]] == [(1, "failed", 7), (2, "failed", 7)]


def test_a_timed_out_attempt_is_retried(cluster, tmp_path):
    marker = f"slow-once-{tmp_path.name}"
    script = f'[ "$HAKURIVER_ATTEMPT" = 1 ] && sleep 30; touch "$HAKURIVER_SHARED_DIR/{marker}"'
    res = cluster.client("--retries", "1", "--time-limit", "1", "--wait", "--", "sh", "-c", script, timeout=60)
    assert res.returncode == 0, res.stderr
    view = _status(cluster, res.stdout.splitlines()[0])
    assert [a["state"] for a in view["attempts"]] == ["timeout", "completed"]
    assert Path(cluster.shared, marker).exists()


def test_a_killed_task_is_not_retried(cluster, tmp_path):
    gate = f"never-{tmp_path.name}"
    task_id = cluster.submit("--retries", "3", "--", "sh", "-c", GATED, gate)
    cluster.wait_state(task_id, "running")
    assert cluster.client("--kill", task_id).returncode == 0
    row = cluster.wait_state(task_id, "killed")
    assert row["attempt"] == 1


# ---- dependencies --------------------------------------------------------------------------
def test_after_waits_for_every_dependency_to_complete(cluster, tmp_path):
    gate = f"gate-{tmp_path.name}"
    first = cluster.submit("--", "sh", "-c", GATED, gate)
    second = cluster.submit("--", "true")
    dependent = cluster.submit("--after", f"{first[:8]},{second}", "--", "true")
    cluster.wait_state(second, "completed")
    view = _status(cluster, dependent)
    assert view["state"] == "pending" and view["after"] == sorted([first, second])
    assert view["pending_reason"] == f"waiting for dependency {first} to complete"
    assert "Waiting:" in cluster.client("--status", dependent).stdout
    _open(cluster, gate)
    row = cluster.wait_state(dependent, "completed")
    assert row["started_at"] >= cluster.task(first)["finished_at"]


def test_a_failed_dependency_fails_the_dependent_without_running_it(cluster, tmp_path):
    failing = cluster.submit("--", "sh", "-c", "sleep 0.5; exit 3")
    marker = Path(cluster.shared, f"ran-{tmp_path.name}")
    dependent = cluster.submit("--after", failing, "--", "touch", str(marker))
    then = cluster.submit("--after", dependent, "--", "touch", str(marker))
    row = cluster.wait_state(dependent, "failed")
    assert row["error"] == f"dependency {failing} ended failed" and row["started_at"] is None
    assert cluster.wait_state(then, "failed")["error"] == f"dependency {dependent} ended failed"
    assert not marker.exists()
    late = cluster.submit("--after", failing, "--", "touch", str(marker))  # already failed: fails at once
    assert cluster.wait_state(late, "failed")["error"] == f"dependency {failing} ended failed"


def test_after_a_batch_waits_for_all_of_it(cluster, tmp_path):
    gate = f"batch-gate-{tmp_path.name}"
    batch = _json(cluster.client("--json", "--array", "1-3", "--", "sh", "-c",
                                 f'[ "$HAKURIVER_ARRAY_INDEX" != 2 ] || {GATED}', gate))
    dependent = cluster.submit("--after", batch["batch_id"][:8], "--", "true")
    wait_until(lambda: sum(cluster.task(t)["state"] == "completed" for t in batch["task_ids"]) == 2, 30, "two done")
    assert cluster.task(dependent)["state"] == "pending"
    _open(cluster, gate)
    row = cluster.wait_state(dependent, "completed")
    assert row["started_at"] >= max(cluster.task(t)["finished_at"] for t in batch["task_ids"])


def test_an_unknown_dependency_refuses_the_submission(cluster):
    before = cluster.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"]
    _one_line_error(cluster.client("--after", "0123abcd", "--", "true"), "no task or batch with ID 0123abcd")
    _one_line_error(cluster.client("--after", "not-an-id", "--", "true"), "--after")
    assert cluster.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"] == before


def test_a_chain_of_three_survives_a_host_restart(fresh_cluster, tmp_path):
    c = fresh_cluster
    c.start_host()
    c.start_runner("a", 2)
    c.wait_online("a")
    gate = "chain-gate"
    first = c.submit("--", "sh", "-c", GATED, gate)
    second = c.submit("--after", first, "--", "true")
    third = c.submit("--after", second, "--", "true")
    c.wait_state(first, "running")
    c.host.stop()
    c.start_host()
    assert _status(c, third)["pending_reason"] == f"waiting for dependency {second} to complete"
    _open(c, gate)
    rows = [c.wait_state(t, "completed") for t in (first, second, third)]
    assert rows[0]["finished_at"] <= rows[1]["started_at"] and rows[1]["finished_at"] <= rows[2]["started_at"]


# ---- throttles -----------------------------------------------------------------------------
def test_a_throttled_array_never_runs_more_than_k_at_once(fresh_cluster):
    c = fresh_cluster
    c.start_host()
    c.start_runner("big", 8)
    c.wait_online("big")
    doc = _json(c.client("--json", "--array", "1-8%2", "--wait", "--", "sleep", "0.3", timeout=120))
    assert doc["counts"] == {"completed": 8}
    rows = c.query("SELECT started_at, finished_at FROM tasks WHERE batch_id = ?", doc["batch_id"])
    assert {r["started_at"] is not None for r in rows} == {True}
    # the most tasks running at one moment, from the records' own start and finish times
    events = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert 1 <= most <= 2
    assert {t["throttle"] for t in _json(c.client("--list", "--batch", doc["batch_id"], "--json"))["tasks"]} == {2}


def test_a_throttled_task_says_why_it_waits(cluster, tmp_path):
    gate = f"throttle-gate-{tmp_path.name}"
    batch = _json(cluster.client("--json", "--array", "1-2%1", "--", "sh", "-c", GATED, gate))
    wait_until(lambda: sorted(cluster.task(t)["state"] for t in batch["task_ids"]) == ["pending", "running"], 30,
               "one running")
    waiting = next(t for t in batch["task_ids"] if cluster.task(t)["state"] == "pending")
    assert _status(cluster, waiting)["pending_reason"].startswith("throttled: its batch already runs 1 tasks")
    _open(cluster, gate)
    for t in batch["task_ids"]:
        cluster.wait_state(t, "completed")


# ---- retry-failed --------------------------------------------------------------------------
def test_retry_failed_resubmits_exactly_the_problem_tasks_of_a_batch(cluster):
    # index 1 completes, 2 fails, 3 runs out of time, 4 is killed
    script = 'case $HAKURIVER_ARRAY_INDEX in 1) exit 0;; 2) exit 1;; *) sleep 30;; esac'
    first = _json(cluster.client("--json", "--array", "1-4", "--name", "job-{}", "--env", "X=1", "--time-limit", "2",
                                 "--", "sh", "-c", script))
    by_name = {cluster.task(t)["name"]: t for t in first["task_ids"]}
    cluster.wait_state(by_name["job-4"], "running")
    assert cluster.client("--kill", by_name["job-4"]).returncode == 0
    for t in first["task_ids"]:
        cluster.wait_state(t, "completed", "failed", "timeout", "killed")
    states = {r["name"]: r["state"] for r in cluster.query("SELECT * FROM tasks WHERE batch_id = ?", first["batch_id"])}
    assert states == {"job-1": "completed", "job-2": "failed", "job-3": "timeout", "job-4": "killed"}
    problems = [r for r in cluster.query("SELECT * FROM tasks WHERE batch_id = ? AND state != 'completed'",
                                         first["batch_id"])]
    again = _json(cluster.client("--retry-failed", first["batch_id"][:8], "--json"))
    assert again["batch_id"] != first["batch_id"] and len(again["task_ids"]) == 3
    new = [cluster.task(t) for t in again["task_ids"]]
    same = ("command", "args", "env", "cores", "name", "cwd", "target_node", "time_limit", "retries", "throttle")
    assert sorted(tuple(r[k] for k in same) for r in new) == sorted(tuple(r[k] for k in same) for r in problems)
    assert {r["batch_id"] for r in new} == {again["batch_id"]} and {r["attempt"] for r in new} == {1}
    for t in again["task_ids"]:
        cluster.client("--kill", t)


def test_retry_failed_on_one_task_and_on_nothing_to_retry(cluster):
    res = cluster.client("--time-limit", "1", "--wait", "--", "sleep", "30", timeout=60)
    timed_out = res.stdout.splitlines()[0]
    again = cluster.client("--retry-failed", timed_out)
    assert again.returncode == 0, again.stderr
    [new_id] = _json(cluster.client("--list", "--batch", again.stdout.strip(), "--json"))["tasks"]
    assert new_id["command"] == "sleep" and new_id["time_limit"] == 1.0
    ok = cluster.submit("--wait", "--", "true")
    _one_line_error(cluster.client("--retry-failed", ok), "no failed, killed, lost or timed-out task to retry")
    _one_line_error(cluster.client("--retry-failed", "00000000"), "no task or batch with ID 00000000")


# ---- why pending ---------------------------------------------------------------------------
def test_a_pending_task_names_the_cores_it_waits_for_or_its_offline_node(fresh_cluster):
    c = fresh_cluster
    c.start_host()
    c.start_runner("a", 2)
    c.start_runner("b", 1)
    c.wait_online("a", "b")
    blocker = c.submit("--node", "a", "--cores", "2", "--", "sh", "-c", GATED, "open")
    c.wait_state(blocker, "running")
    waiting = c.submit("--cores", "2", "--", "true")
    assert _status(c, waiting)["pending_reason"] == "needs 2 cores; the largest free block is 1 (on b)"
    c.runners["b"].stop()
    wait_until(lambda: c.nodes()["b"]["state"] == "offline", 30, "b offline")
    on_b = c.submit("--node", "b", "--", "true")
    assert _status(c, on_b)["pending_reason"] == "node b is offline"
    _open(c, "open")
    c.wait_state(waiting, "completed")
