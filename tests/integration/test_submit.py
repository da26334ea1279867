"""Submitting: --cores/--wait, --env, arguments passed through untouched, pinning, temp dir, cwd."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hakuriver import protocol as p
from support import wait_until


def _out(row) -> str:  # noqa: ANN001
    return Path(row["stdout_path"]).read_text()


def test_seed_example_wait_python_version(cluster):
    res = cluster.client("--cores", "1", "--wait", "--", "python", "-V")
    assert res.returncode == 0, res.stderr
    task_id = res.stdout.splitlines()[0]
    assert p.is_task_id(task_id)
    assert f"task {task_id} completed (exit code 0)" in res.stdout
    row = cluster.task(task_id)
    assert row["state"] == "completed" and row["exit_code"] == 0
    assert _out(row).startswith("Python 3")
    assert row["stdout_path"].startswith(str(cluster.shared)) and row["stderr_path"].startswith(str(cluster.shared))
    assert row["stdout_path"] in res.stdout


def test_a_task_starts_with_default_signal_handling_so_a_closed_pipe_ends_its_writer(cluster):
    # Python ignores SIGPIPE, and an ignored signal survives exec: a task must not inherit that
    res = cluster.client("--wait", "--", "sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -n 1")
    assert res.returncode == 0, res.stderr
    out = _out(cluster.task(res.stdout.splitlines()[0]))
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in out.splitlines() if line.startswith("Sig")}
    for name, number in (("SIGPIPE", 13), ("SIGXFSZ", 25)):
        assert not masks["SigIgn"] & (1 << (number - 1)), f"{name} is ignored in the task: {out}"
        assert not masks["SigBlk"] & (1 << (number - 1)), f"{name} is blocked in the task: {out}"
    assert out.endswith("y\n")


def test_wait_exits_with_the_task_exit_code_and_prints_failed(cluster):
    res = cluster.client("--wait", "--", "sh", "-c", "exit 7")
    assert res.returncode == 7
    assert " failed (exit code 7)" in res.stdout


def test_repeatable_env_and_hakuriver_variables(cluster):
    script = (
        "import json, os; keys = ['MY_VAR', 'OTHER_VAR', 'HAKURIVER_TASK_ID', 'HAKURIVER_NODE', 'HAKURIVER_CORES',"
        " 'HAKURIVER_SHARED_DIR', 'HAKURIVER_LOCAL_TEMP_DIR', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', "
        "'OPENBLAS_NUM_THREADS']; print(json.dumps({k: os.environ.get(k) for k in keys}))"
    )
    res = cluster.client("--cores", "4", "--env", "MY_VAR=ABC", "--env", "OTHER_VAR=123", "--wait", "--",
                         sys.executable, "-c", script)
    assert res.returncode == 0, res.stderr
    task_id = res.stdout.splitlines()[0]
    row = cluster.task(task_id)
    env = json.loads(_out(row))
    assert env["MY_VAR"] == "ABC" and env["OTHER_VAR"] == "123"
    assert env["HAKURIVER_TASK_ID"] == task_id
    assert env["HAKURIVER_NODE"] == row["node"] == "a"  # only node a has 4 cores
    assert env["HAKURIVER_CORES"] == row["core_ids"] == "0,1,2,3"
    assert env["HAKURIVER_SHARED_DIR"] == str(cluster.shared)
    assert env["HAKURIVER_LOCAL_TEMP_DIR"].startswith(str(cluster.root / "tmp-a"))
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "4"


def test_user_thread_variables_win(cluster):
    res = cluster.client("--cores", "2", "--env", "OMP_NUM_THREADS=1", "--wait", "--", "sh", "-c",
                         'echo "$OMP_NUM_THREADS $MKL_NUM_THREADS"')
    assert res.returncode == 0, res.stderr
    assert _out(cluster.task(res.stdout.splitlines()[0])).strip() == "1 2"


def test_arguments_pass_through_untouched(cluster):
    tricky = ["two words", "it's", 'say "hi"', "--leading-dash", "-x", "$HOME", "*", "", "ünïcode", "a\\b", "--"]
    res = cluster.client("--wait", "--", sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
                         *tricky)
    assert res.returncode == 0, res.stderr
    assert json.loads(_out(cluster.task(res.stdout.splitlines()[0]))) == tricky


def test_sh_dash_c_sees_its_own_variables(cluster):
    res = cluster.client("--env", "X=from env", "--wait", "--", "sh", "-c", 'echo "$X"; echo "$0" "$1"', "zero", "one")
    assert res.returncode == 0, res.stderr
    assert _out(cluster.task(res.stdout.splitlines()[0])) == "from env\nzero one\n"


def test_stderr_lands_in_its_own_file(cluster):
    res = cluster.client("--wait", "--", "sh", "-c", "echo out; echo err >&2")
    row = cluster.task(res.stdout.splitlines()[0])
    assert Path(row["stdout_path"]).read_text() == "out\n"
    assert Path(row["stderr_path"]).read_text() == "err\n"


def test_task_is_pinned_to_exactly_its_cores_by_affinity(cluster):
    # node b has 2 real cores, so its core IDs are the CPU numbers themselves
    res = cluster.client("--node", "b", "--cores", "1", "--wait", "--", "grep", "Cpus_allowed_list", "/proc/self/status")
    assert res.returncode == 0, res.stderr
    row = cluster.task(res.stdout.splitlines()[0])
    allowed = _out(row).split(":")[1].strip()
    assert allowed == row["core_ids"] and len(row["core_ids"].split(",")) == 1


def test_per_task_temp_folder_is_fresh_and_removed(cluster):
    res = cluster.client("--wait", "--", "sh", "-c", 'ls -A "$HAKURIVER_LOCAL_TEMP_DIR" | wc -l; echo "$HAKURIVER_LOCAL_TEMP_DIR"; pwd')
    assert res.returncode == 0, res.stderr
    count, folder, _ = _out(cluster.task(res.stdout.splitlines()[0])).split("\n", 2)
    assert count.strip() == "0"
    assert not os.path.exists(folder)


def test_a_temp_folder_left_full_is_removed_too(cluster):
    script = 'mkdir "$HAKURIVER_LOCAL_TEMP_DIR/sub"; echo x > "$HAKURIVER_LOCAL_TEMP_DIR/sub/f"; echo "$HAKURIVER_LOCAL_TEMP_DIR"'
    res = cluster.client("--wait", "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    folder = _out(cluster.task(res.stdout.splitlines()[0])).strip()
    wait_until(lambda: not os.path.exists(folder), 10, f"{folder} to be removed")


def test_working_directory_is_the_clients_when_it_exists(cluster, tmp_path):
    res = cluster.client("--wait", "--", "pwd", cwd=str(tmp_path))
    assert _out(cluster.task(res.stdout.splitlines()[0])).strip() == str(tmp_path)


def test_working_directory_falls_back_to_the_temp_folder(cluster):
    client = cluster.api()
    spec = p.TaskSpec(command="sh", args=["-c", 'pwd; echo "$HAKURIVER_LOCAL_TEMP_DIR"'], cwd="/no/such/dir/on/this/node")
    task_id = client.submit([spec]).task_ids[0]
    row = cluster.wait_state(task_id, "completed")
    pwd, temp = _out(row).split()
    assert pwd == temp


def test_no_wait_returns_at_once_and_the_task_still_runs(cluster):
    res = cluster.client("--", "sh", "-c", "echo later")
    assert res.returncode == 0
    task_id = res.stdout.strip()
    row = cluster.wait_state(task_id, "completed")
    assert _out(row) == "later\n"


def test_command_not_found_fails_with_a_reason(cluster):
    res = cluster.client("--wait", "--", "no-such-command-hakuriver")
    assert res.returncode == 1
    row = cluster.task(res.stdout.splitlines()[0])
    assert row["state"] == "failed" and "command not found: no-such-command-hakuriver" in row["error"]
