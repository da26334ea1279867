"""Bulk submission: --array and --file make one batch that --status, --wait and --kill accept."""

from __future__ import annotations

import json

from pathlib import Path


def batch_rows(cluster, batch_id: str) -> list:  # noqa: ANN001
    return cluster.query("SELECT * FROM tasks WHERE batch_id = ? ORDER BY submitted_at, rowid", batch_id)


def test_array_replaces_braces_and_sets_the_index(cluster):
    res = cluster.client("--array", "1-5,8", "--wait", "--", "sh", "-c", 'echo "{} $HAKURIVER_ARRAY_INDEX"', "x{}y")
    assert res.returncode == 0, res.stderr
    batch_id = res.stdout.splitlines()[0]
    assert "6 tasks: 6 completed" in res.stdout
    rows = batch_rows(cluster, batch_id)
    assert [Path(r["stdout_path"]).read_text() for r in rows] == [f"{i} {i}\n" for i in (1, 2, 3, 4, 5, 8)]
    assert json.loads(rows[0]["args"]) == ["-c", 'echo "1 $HAKURIVER_ARRAY_INDEX"', "x1y"]


def test_file_of_commands(cluster, tmp_path):
    commands = tmp_path / "commands.txt"
    commands.write_text("# a sweep\necho 'a b'\n\nsh -c 'exit 3'  # fails\necho c\n")
    res = cluster.client("--file", str(commands), "--wait")
    assert res.returncode == 1  # not every task completed
    batch_id = res.stdout.splitlines()[0]
    rows = batch_rows(cluster, batch_id)
    assert [r["state"] for r in rows] == ["completed", "failed", "completed"]
    assert Path(rows[0]["stdout_path"]).read_text() == "a b\n"
    assert "3 tasks: 2 completed, 1 failed" in res.stdout
    assert f"{rows[1]['task_id']} failed exit code 3" in res.stdout


def test_status_and_kill_accept_the_batch_id(cluster):
    res = cluster.client("--array", "1-12", "--", "sleep", "30")
    batch_id = res.stdout.strip()
    status = cluster.client("--status", batch_id)
    assert status.returncode == 0 and "12 tasks:" in status.stdout and "in progress" in status.stdout
    killed = cluster.client("--kill", batch_id)
    assert killed.returncode == 0 and "kill requested for 12 unfinished tasks" in killed.stdout
    for row in batch_rows(cluster, batch_id):
        cluster.wait_state(row["task_id"], "killed")
    final = cluster.client("--status", batch_id)
    assert "12 tasks: 12 killed" in final.stdout and "finished" in final.stdout
    again = cluster.client("--kill", batch_id)
    assert again.returncode == 1 and "already finished" in again.stderr


def test_progress_shows_counts_by_state(cluster):
    res = cluster.client("--array", "1-20", "--wait", "--progress", "--", "true")
    assert res.returncode == 0
    assert "20 tasks:" in res.stderr and "20 tasks: 20 completed" in res.stdout


def test_bad_bulk_input_changes_nothing(cluster, tmp_path):
    before = len(cluster.query("SELECT task_id FROM tasks"))
    cases = [
        (["--array", "5-1", "--", "true"], "must count up"),
        (["--array", "a-b", "--", "true"], "is not N, N-M or N-M:STEP"),
        (["--array", "1-2", "--file", "x"], "not allowed with argument"),
        (["--file", str(tmp_path / "missing")], "cannot read --file"),
        (["--array", "1-3", "--cores", "9", "--", "true"], "largest node (a) has 4 cores"),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    cases.append((["--file", str(empty)], "has no commands"))
    quoted = tmp_path / "quote.txt"
    quoted.write_text("echo 'unclosed\n")
    cases.append((["--file", str(quoted)], "line 1: No closing quotation"))
    for args, message in cases:
        res = cluster.client(*args)
        assert res.returncode in (1, 2), (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, (args, res.stderr)
    assert len(cluster.query("SELECT task_id FROM tasks")) == before
