"""Upgrades keep data: a database written by an earlier release opens with every record intact,
and one from a newer release is refused untouched (SPEC §14)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from dataclasses import fields
from pathlib import Path

import pytest

from hakuriver import protocol as p
from hakuriver.core.cores import parse_core_ids
from hakuriver.core.model import Task
from hakuriver.core.states import TaskState
from hakuriver.host.convert import task_view
from hakuriver.host.migrations import MIGRATIONS
from hakuriver.host.rows import TASK_COLUMNS
from hakuriver.host.store import Store, StoreError, TaskFilter

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def release_825ccee_db(tmp_path: Path) -> tuple[str, dict]:
    """A copy of the database written by release 825ccee (opening it in place would touch the fixture)."""
    path = tmp_path / "hakuriver.db"
    shutil.copy(FIXTURES / "db_825ccee.sqlite", path)
    return str(path), json.loads((FIXTURES / "db_825ccee.expected.json").read_text())


def test_the_column_list_is_the_migrated_schema_and_the_task_model(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    store.close()
    with sqlite3.connect(tmp_path / "h.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(tasks)")]
        version = db.execute("PRAGMA user_version").fetchone()[0]
    assert sorted(columns) == sorted(c.name for c in TASK_COLUMNS) == sorted(f.name for f in fields(Task))
    assert version == len(MIGRATIONS)


def test_a_database_of_release_825ccee_keeps_every_record(release_825ccee_db):
    path, expected = release_825ccee_db
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    store = Store(path)
    states = set()
    for task_id, row in expected["tasks"].items():
        task = store.get_task(task_id)
        assert task is not None, task_id
        states.add(task.state)
        assert (task.state.value, task.exit_code, task.signal, task.error) == (
            row["state"], row["exit_code"], row["signal"], row["error"])
        assert (task.stdout_path, task.stderr_path, task.cwd) == (row["stdout_path"], row["stderr_path"], row["cwd"])
        assert (task.command, task.args, task.env, task.cores) == (
            row["command"], json.loads(row["args"]), json.loads(row["env"]), row["cores"])
        assert (task.node, task.core_ids, task.batch_id) == (row["node"], parse_core_ids(row["core_ids"]), row["batch_id"])
        assert (task.submitted_at, task.started_at, task.finished_at) == (
            row["submitted_at"], row["started_at"], row["finished_at"])
        assert (task.name, task.owner, task.max_rss_bytes) == ("", "", None)  # new fields start empty
        assert isinstance(task_view(task), p.TaskView)
    assert {TaskState.COMPLETED, TaskState.FAILED, TaskState.KILLED, TaskState.RUNNING, TaskState.PENDING} <= states
    assert {n.name: n.cores.all for n in store.nodes()} == {
        name: parse_core_ids(row["core_ids"]) for name, row in expected["nodes"].items()}
    active = {t.task_id for t in store.active_tasks()}
    assert active == {i for i, row in expected["tasks"].items() if row["state"] in ("pending", "assigning", "running", "lost")}
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_migrated_database_opens_again_unchanged(release_825ccee_db):
    path, expected = release_825ccee_db
    first = Store(path)
    before = [task_view(t) for t in first.list_tasks(TaskFilter(), 0)[0]]
    first.close()
    again = Store(path)
    after, total, _ = again.list_tasks(TaskFilter(), 0)
    assert [task_view(t) for t in after] == before and total == len(expected["tasks"])
    again.close()


def _newer_database(path: Path, version: int) -> str:
    """A database of this schema, stamped with a later version; its bytes' digest."""
    Store(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_from_a_newer_release_is_refused_untouched(tmp_path):
    path = tmp_path / "newer.db"
    before = _newer_database(path, len(MIGRATIONS) + 1)
    with pytest.raises(StoreError, match=f"schema version {len(MIGRATIONS) + 1}, newer than this HakuRiver"):
        Store(str(path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_host_refuses_a_newer_database_in_one_line(tmp_path):
    import subprocess

    from support import program, write_toml

    db = tmp_path / "newer.db"
    before = _newer_database(db, len(MIGRATIONS) + 5)
    config = write_toml(tmp_path / "host.toml", {"database": {"db_file": str(db)}, "network": {"host_port": 1}})
    res = subprocess.run(program("host") + ["--config", str(config)], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "newer than this HakuRiver knows" in res.stderr, res.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
