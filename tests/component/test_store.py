"""Reopening the file is what a host restart does: records and the queue must come back."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from hakuriver.core.cores import CoreSet
from hakuriver.core.model import Node, Task
from hakuriver.core.states import NodeState, TaskState
from hakuriver.host.rows import NewRows
from hakuriver.host.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_round_trip_every_field(tmp_path):
    path = str(tmp_path / "new" / "folder" / "h.db")
    store = Store(path)
    t = Task("id1", "sh", ["-c", "echo 'x'"], {"A": "1"}, 2, 1.5, cwd="/w", target_node="n", batch_id="b",
             state=TaskState.RUNNING, node="n", core_ids=(2, 3), exit_code=None, signal=None, error="",
             started_at=2.0, stdout_path="/o", stderr_path="/e", kill_requested=True)
    n = Node("n", CoreSet([0, 1, 2, 3]), 1024, NodeState.ONLINE, 9.0)
    store.insert([t])
    store.save(nodes=[n])
    store.close()
    reopened = Store(path)
    assert reopened.get_task("id1") == t
    [node] = reopened.nodes()
    assert (node.name, node.cores.all, node.memory_bytes, node.state) == ("n", (0, 1, 2, 3), 1024, NodeState.ONLINE)
    assert [x.task_id for x in reopened.active_tasks()] == ["id1"]
    assert [x.task_id for x in reopened.batch_tasks("b")] == ["id1"]


def test_active_tasks_exclude_final_ones_and_keep_submission_order(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    tasks = [Task(f"t{i}", "true", [], {}, 1, float(10 - i)) for i in range(4)]
    tasks[1].state = TaskState.COMPLETED
    tasks[2].state = TaskState.LOST
    store.insert(tasks)
    assert [t.task_id for t in store.active_tasks()] == ["t3", "t2", "t0"]


def test_changes_update_only_what_can_change_and_keep_submission_order(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    tasks = [Task(f"t{i}", "echo", [str(i)], {"I": str(i)}, 1, 5.0, batch_id="b") for i in range(3)]
    store.insert(tasks)
    tasks[0].state, tasks[0].node, tasks[0].core_ids, tasks[0].exit_code = TaskState.FAILED, "n", (1,), 3
    tasks[0].error, tasks[0].finished_at = "boom", 9.0
    store.save(changed=[tasks[0]])
    again = store.get_task("t0")
    assert (again.state, again.node, again.core_ids, again.exit_code, again.error, again.finished_at) == (
        TaskState.FAILED, "n", (1,), 3, "boom", 9.0)
    assert again.args == ["0"] and again.env == {"I": "0"}
    # same submission instant: the batch still lists in submission order after the update
    assert [t.task_id for t in store.batch_tasks("b")] == ["t0", "t1", "t2"]


def test_new_tasks_written_without_their_later_columns_read_back_the_same(tmp_path):
    """A submission whose tasks hold the defaults in every column that only a task's later life
    changes writes only the other columns; the schema's defaults must then be the model's."""
    path = str(tmp_path / "h.db")
    store = Store(path)
    tasks = [Task(f"t{i}", "echo", [str(i)], {"I": str(i)}, 1, 5.0, cwd="/w", batch_id="b", name=f"n{i}",
                  owner="ann", time_limit=9.5, retries=2, after=["x"], throttle=3) for i in range(3)]
    assert store._new_rows.lean(tasks) is not None  # (else the insert writes every column)
    store.insert(tasks)
    store.close()
    reopened = Store(path)
    assert [reopened.get_task(t.task_id) for t in tasks] == tasks
    lean = reopened._new_rows.lean_columns
    assert {"task_id", "state", "command", "time_limit", "after"} <= set(lean)
    assert not {"node", "core_ids", "exit_code", "attempt", "attempts", "unix_user"} & set(lean)


def test_a_submission_with_a_task_past_its_defaults_writes_every_column_in_order(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    tasks = [Task(f"t{i}", "true", [], {}, 1, 5.0, batch_id="b") for i in range(3)]
    tasks[1].attempt, tasks[1].unix_user, tasks[1].kill_requested = 2, "bob", True
    store.insert(tasks)
    assert [store.get_task(t.task_id) for t in tasks] == tasks
    assert [t.task_id for t in store.batch_tasks("b")] == ["t0", "t1", "t2"]


def test_a_lean_row_stores_what_the_full_row_stores_value_and_type_on_a_new_and_a_migrated_database(tmp_path):
    """Byte for byte: SQLite's types too (an int default where the model holds a float would pass
    a comparison of the tasks read back, and not this)."""
    shutil.copy(FIXTURES / "db_825ccee.sqlite", tmp_path / "old.db")
    leans = []
    for path in (tmp_path / "new.db", tmp_path / "old.db"):
        store = Store(str(path))
        leans.append(store._new_rows.lean_columns)
        lean, full = Task("lean-1", "true", [], {}, 1, 5.0), Task("full-1", "true", [], {}, 1, 5.0)
        full.unix_user = "x"  # a late column off its default: this submission takes the full insert
        store.insert([lean])
        store.insert([full])
        store.close()
        db = sqlite3.connect(str(path))
        columns = [r[1] for r in db.execute("PRAGMA table_info(tasks)")]
        typed = ", ".join(f"{c}, typeof({c})" for c in columns if c not in ("task_id", "unix_user"))
        rows = {r[0]: r[1:] for r in db.execute(f"SELECT task_id, {typed} FROM tasks WHERE task_id IN ('lean-1', 'full-1')")}
        db.close()
        assert rows["lean-1"] == rows["full-1"]
    assert leans[0] == leans[1]


def test_a_column_whose_schema_default_differs_from_the_model_is_always_written():
    assert "attempt" not in NewRows({"attempt": 1}).lean_columns
    assert "attempt" in NewRows({"attempt": 0}).lean_columns  # a schema default the model does not share
    assert "attempt" in NewRows({"attempt": 1.0}).lean_columns  # equal, but SQLite would store a REAL
    assert "attempt" in NewRows({}).lean_columns  # no default at all
