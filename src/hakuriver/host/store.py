"""The SQLite store: schema, every SQL statement, and row <-> model conversion.

The only module that imports sqlite3. It decides nothing: no state transitions, no scheduling.
WAL mode with one transaction per batch of changes keeps writes cheap under load.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable

import msgspec

from hakuriver.core.cores import CoreSet, format_core_ids, parse_core_ids
from hakuriver.core.model import Node, Task
from hakuriver.core.states import NodeState, TaskState

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    env TEXT NOT NULL,
    cores INTEGER NOT NULL,
    cwd TEXT NOT NULL DEFAULT '',
    target_node TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    core_ids TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    signal INTEGER,
    error TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    stdout_path TEXT NOT NULL DEFAULT '',
    stderr_path TEXT NOT NULL DEFAULT '',
    kill_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_active ON tasks(state)
    WHERE state IN ('pending', 'assigning', 'running', 'lost');
CREATE INDEX IF NOT EXISTS tasks_batch ON tasks(batch_id) WHERE batch_id != '';
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    core_ids TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL,
    state TEXT NOT NULL,
    last_heartbeat REAL NOT NULL
);
"""

_TASK_COLUMNS = (
    "task_id, batch_id, state, command, args, env, cores, cwd, target_node, node, core_ids, exit_code, "
    "signal, error, submitted_at, started_at, finished_at, stdout_path, stderr_path, kill_requested"
)
_INSERT_TASK = f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ({', '.join('?' * 20)})"
# What can change after submission; the command, arguments and environment never do.
_UPDATE_TASK = (
    "UPDATE tasks SET state = ?, node = ?, core_ids = ?, exit_code = ?, signal = ?, error = ?, started_at = ?, "
    "finished_at = ?, stdout_path = ?, stderr_path = ?, kill_requested = ? WHERE task_id = ?"
)
_UPSERT_NODE = "INSERT OR REPLACE INTO nodes (name, core_ids, memory_bytes, state, last_heartbeat) VALUES (?, ?, ?, ?, ?)"
_GET_TASK = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?"
_ACTIVE_TASKS = (
    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state IN ('pending', 'assigning', 'running', 'lost') "
    "ORDER BY submitted_at, rowid"
)
_BATCH_TASKS = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE batch_id = ? ORDER BY submitted_at, rowid"
_BATCH_COUNTS = "SELECT state, COUNT(*) FROM tasks WHERE batch_id = ? GROUP BY state"
_BATCH_PROBLEMS = (
    "SELECT task_id, state, exit_code, error FROM tasks WHERE batch_id = ? "
    "AND state IN ('failed', 'killed', 'lost') ORDER BY submitted_at LIMIT ?"
)
_ALL_NODES = "SELECT name, core_ids, memory_bytes, state, last_heartbeat FROM nodes ORDER BY name"


class StoreError(Exception):
    """The database cannot be opened or created."""


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            # check_same_thread=False: the host uses it from its event loop thread only, but the
            # loop may be created on a different thread than the one that opened the file.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the host process (the WAL is in
            # the OS before COMMIT returns); only a power loss can drop the latest commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def save(self, created: Iterable[Task] = (), changed: Iterable[Task] = (), nodes: Iterable[Node] = ()) -> None:
        """Write new tasks, changes to known tasks, and nodes in one transaction; returns once committed."""
        new_rows = [_task_row(t) for t in created]
        change_rows = [_change_row(t) for t in changed]
        node_rows = [_node_row(n) for n in nodes]
        if not new_rows and not change_rows and not node_rows:
            return
        with _transaction(self._db):
            if new_rows:
                self._db.executemany(_INSERT_TASK, new_rows)
            if change_rows:
                self._db.executemany(_UPDATE_TASK, change_rows)
            if node_rows:
                self._db.executemany(_UPSERT_NODE, node_rows)

    def get_task(self, task_id: str) -> Task | None:
        row = self._db.execute(_GET_TASK, (task_id,)).fetchone()
        return _task_from_row(row) if row else None

    def batch_tasks(self, batch_id: str) -> list[Task]:
        return [_task_from_row(r) for r in self._db.execute(_BATCH_TASKS, (batch_id,))]

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        return dict(self._db.execute(_BATCH_COUNTS, (batch_id,)).fetchall())

    def batch_problems(self, batch_id: str, limit: int) -> list[tuple[str, str, int | None, str]]:
        return self._db.execute(_BATCH_PROBLEMS, (batch_id, limit)).fetchall()

    def active_tasks(self) -> list[Task]:
        return [_task_from_row(r) for r in self._db.execute(_ACTIVE_TASKS)]

    def nodes(self) -> list[Node]:
        return [_node_from_row(r) for r in self._db.execute(_ALL_NODES)]


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()  # several times faster than json.dumps: a batch holds thousands


def _task_row(t: Task) -> tuple:
    return (
        t.task_id, t.batch_id, t.state.value, t.command, _json_text(t.args), _json_text(t.env), t.cores,
        t.cwd, t.target_node, t.node, format_core_ids(t.core_ids), t.exit_code, t.signal, t.error,
        t.submitted_at, t.started_at, t.finished_at, t.stdout_path, t.stderr_path, int(t.kill_requested),
    )


def _change_row(t: Task) -> tuple:
    return (
        t.state.value, t.node, format_core_ids(t.core_ids), t.exit_code, t.signal, t.error, t.started_at,
        t.finished_at, t.stdout_path, t.stderr_path, int(t.kill_requested), t.task_id,
    )


def _task_from_row(r: tuple) -> Task:
    return Task(
        task_id=r[0], batch_id=r[1], state=TaskState(r[2]), command=r[3], args=json.loads(r[4]),
        env=json.loads(r[5]), cores=r[6], cwd=r[7], target_node=r[8], node=r[9],
        core_ids=parse_core_ids(r[10]), exit_code=r[11], signal=r[12], error=r[13], submitted_at=r[14],
        started_at=r[15], finished_at=r[16], stdout_path=r[17], stderr_path=r[18], kill_requested=bool(r[19]),
    )


def _node_row(n: Node) -> tuple:
    return (n.name, format_core_ids(n.cores.all), n.memory_bytes, n.state.value, n.last_heartbeat)


def _node_from_row(r: tuple) -> Node:
    return Node(name=r[0], cores=CoreSet(parse_core_ids(r[1])), memory_bytes=r[2], state=NodeState(r[3]), last_heartbeat=r[4])
