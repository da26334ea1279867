"""The SQLite store: the schema's migrations applied, and every SQL statement.

The only module that imports sqlite3. It decides nothing: no state transitions, no scheduling.
Each task column is named once, in `TASK_COLUMNS` (rows.py, with the row <-> `Task` mapping);
every statement is derived from that list by name. New tasks that still hold the schema's
defaults are inserted naming only the other columns (`rows.NewRows`, from `PRAGMA table_info`
read at open). The schema grows only by appending to `MIGRATIONS` (`PRAGMA user_version`
counts those applied). WAL mode with one transaction per batch of changes keeps writes cheap;
reads for big queries run on other threads, each with its own connection (`reader`), so the
host's event loop never waits on them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from hakuriver.core.model import Node, Task
from hakuriver.core.states import PROBLEM_STATES, TaskState
from hakuriver.host.migrations import MIGRATIONS
from hakuriver.host.rows import (CHANGING, NODE_COLUMNS, TASK_COLUMNS, NewRows, change_row, node_from_row, node_row,
                                 task_from_row, task_row)

_ALL = ", ".join(c.name for c in TASK_COLUMNS)


def _insert(columns: list[str]) -> str:
    return f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


_INSERT_TASK = _insert([c.name for c in TASK_COLUMNS])
_UPDATE_TASK = f"UPDATE tasks SET {', '.join(f'{c.name} = ?' for c in CHANGING)} WHERE task_id = ?"
_SELECT = f"SELECT {_ALL} FROM tasks"
_GET_TASK = f"{_SELECT} WHERE task_id = ?"
ACTIVE_STATES = tuple(s.value for s in TaskState if not s.is_final or s is TaskState.LOST)
_ALL_STATES = tuple(s.value for s in TaskState)
_ACTIVE_TASKS = f"{_SELECT} WHERE state IN {ACTIVE_STATES} ORDER BY submitted_at, rowid"
_BATCH_TASKS = f"{_SELECT} WHERE batch_id = ? ORDER BY submitted_at, rowid"
_BATCH_COUNTS = "SELECT state, COUNT(*) FROM tasks WHERE batch_id = ? GROUP BY state"
_PROBLEM_STATES = tuple(sorted(s.value for s in PROBLEM_STATES))
_BATCH_PROBLEMS = (
    "SELECT task_id, state, exit_code, error, name, json_extract(env, '$.HAKURIVER_ARRAY_INDEX') "
    f"FROM tasks WHERE batch_id = ? AND state IN {_PROBLEM_STATES} ORDER BY submitted_at, rowid LIMIT ?"
)
# ID prefixes: range scans of the primary key and of the batch index ('~' sorts after hex digits and '-')
_TASKS_BY_PREFIX = "SELECT task_id FROM tasks WHERE task_id >= ? AND task_id < ? ORDER BY task_id LIMIT ?"
_FIRST_BATCH = "SELECT batch_id FROM tasks WHERE batch_id >= ? AND batch_id < ? AND batch_id != '' ORDER BY batch_id LIMIT 1"
_NEXT_BATCH = "SELECT batch_id FROM tasks WHERE batch_id > ? AND batch_id < ? AND batch_id != '' ORDER BY batch_id LIMIT 1"
_NODE_ALL = ", ".join(NODE_COLUMNS)
_UPSERT_NODE = f"INSERT OR REPLACE INTO nodes ({_NODE_ALL}) VALUES ({', '.join('?' * len(NODE_COLUMNS))})"
_ALL_NODES = f"SELECT {_NODE_ALL} FROM nodes ORDER BY name"
_USER_COLUMNS = ("name", "admin", "token_id", "token_hash", "created_at")


#: counts of matching tasks stop here (see Store.count_tasks)
COUNT_LIMIT = 100_000


class StoreError(Exception):
    """The database cannot be opened, created or upgraded; the message says what to do."""


class UserExists(Exception):
    pass


class UserRecord(NamedTuple):
    name: str
    admin: bool
    token_id: str
    #: SHA-256 of the token's secret (credentials.hash_secret); the secret itself is never stored
    token_hash: str
    created_at: float


def _user_from_row(row: tuple[Any, ...]) -> UserRecord:
    name, admin, token_id, token_hash, created_at = row
    return UserRecord(name, bool(admin), token_id, token_hash, created_at)


class StoreWriteError(Exception):
    """A change could not be committed (e.g. the disk is full); nothing of it was written."""


@dataclass(frozen=True)
class TaskFilter:
    """The `--list` filters, combined with AND; empty = any."""

    states: tuple[str, ...] = ()
    node: str = ""
    batch_id: str = ""
    #: a shell-style pattern (SQLite GLOB: *, ?, [...])
    name: str = ""
    owner: str = ""

    def where(self) -> tuple[str, list[Any]]:
        terms, params = [], []
        states = self.states
        if not states and self.node and not self.batch_id:
            # every state, spelled out: the (node, state) index then gives each state's rows
            # newest first, and SQLite merges them without sorting them all
            states = _ALL_STATES
        if states:
            terms.append(f"state IN ({', '.join('?' * len(states))})")
            params += states
        for column, value in (("node", self.node), ("owner", self.owner)):
            if value:
                terms.append(f"{column} = ?")
                params.append(value)
        if self.batch_id:
            terms.append("batch_id = ? AND batch_id != ''")  # the second term lets SQLite use the partial index
            params.append(self.batch_id)
        if self.name:
            terms.append("name GLOB ?")
            params.append(self.name)
        return (" WHERE " + " AND ".join(terms)) if terms else "", params


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db = self._connect()
            migrate(self._db, path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the host process (the WAL is in
            # the OS before COMMIT returns); only a power loss can drop the latest commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._new_rows = NewRows(_column_defaults(self._db, "tasks"))
            self._insert_lean = _insert(self._new_rows.lean_columns)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {path}: {exc} (check [database] db_file)") from None

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: each connection is used by one thread only (the event loop's,
        # or a worker's reader), but the loop may run on another thread than the one that opened it.
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def close(self) -> None:
        self._db.close()

    # ---- writes ----------------------------------------------------------------------------
    def insert(self, tasks: Iterable[Task]) -> None:
        """Write new tasks in one transaction; returns once committed."""
        tasks = list(tasks)
        lean = self._new_rows.lean(tasks)
        if lean is None:
            self._write([(_INSERT_TASK, [task_row(t) for t in tasks])])
        else:
            self._write([(self._insert_lean, lean)])

    def save(self, changed: Iterable[Task] = (), nodes: Iterable[Node] = ()) -> None:
        """Write changes to known tasks, and nodes, in one transaction; returns once committed."""
        self._write([(_UPDATE_TASK, [change_row(t) for t in changed]), (_UPSERT_NODE, [node_row(n) for n in nodes])])

    def _write(self, statements: list[tuple[str, list[Any]]]) -> None:
        statements = [(sql, rows) for sql, rows in statements if rows]
        if not statements:
            return
        try:
            self._db.execute("BEGIN")
            for sql, rows in statements:
                self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:  # SQLite may have rolled back by itself (a full disk does)
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # nothing more to undo: the next BEGIN would fail the same way and say so
            raise StoreWriteError(f"cannot write to the database {self.path}: {exc}") from None

    # ---- reads (the event loop's connection: small, indexed lookups only) -------------------
    def get_task(self, task_id: str) -> Task | None:
        row = self._db.execute(_GET_TASK, (task_id,)).fetchone()
        return task_from_row(row) if row else None

    def task_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        return [r[0] for r in self._db.execute(_TASKS_BY_PREFIX, (prefix, prefix + "~", limit))]

    def batch_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Distinct batch IDs, one index seek each (a batch has many rows)."""
        found: list[str] = []
        while len(found) < limit:
            sql, start = (_NEXT_BATCH, found[-1]) if found else (_FIRST_BATCH, prefix)
            row = self._db.execute(sql, (start, prefix + "~")).fetchone()
            if row is None:
                break
            found.append(row[0])
        return found

    def active_tasks(self) -> list[Task]:
        return [task_from_row(r) for r in self._db.execute(_ACTIVE_TASKS)]

    def nodes(self) -> list[Node]:
        return [node_from_row(r) for r in self._db.execute(_ALL_NODES)]

    def batch_owner(self, batch_id: str) -> str | None:
        """The owner of a batch's tasks (one request submits a batch: one owner); None if no such batch."""
        row = self._db.execute("SELECT owner FROM tasks WHERE batch_id = ? LIMIT 1", (batch_id,)).fetchone()
        return None if row is None else row[0]

    # ---- the host's own facts ----------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [[key, value]])])

    # ---- users (SPEC §12) ----------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> None:
        """Raises UserExists if the name is taken."""
        try:
            self._write([(f"INSERT INTO users ({', '.join(_USER_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
                          [[*user[:1], int(user.admin), *user[2:]]])])
        except StoreWriteError:
            if self.user(user.name) is not None:
                raise UserExists(user.name) from None
            raise

    def set_token(self, name: str, token_id: str, token_hash: str) -> None:
        self._write([("UPDATE users SET token_id = ?, token_hash = ? WHERE name = ?", [[token_id, token_hash, name]])])

    def remove_user(self, name: str) -> bool:
        """False if there was no such user."""
        if self.user(name) is None:
            return False
        self._write([("DELETE FROM users WHERE name = ?", [[name]])])
        return True

    def user(self, name: str) -> UserRecord | None:
        row = self._db.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE name = ?", (name,)).fetchone()
        return _user_from_row(row) if row else None

    def user_by_token(self, token_id: str) -> UserRecord | None:
        """Read at every request, so that a user removed by another process is refused at once."""
        row = self._db.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE token_id = ?", (token_id,)).fetchone()
        return _user_from_row(row) if row else None

    def users(self) -> list[UserRecord]:
        return [_user_from_row(r) for r in self._db.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users ORDER BY name")]

    # ---- reads that may be big: call from a worker thread ------------------------------------
    def reader(self) -> sqlite3.Connection:
        """This thread's own read-only connection (WAL: readers never block the writer)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            db.execute("PRAGMA query_only = 1")
        return db

    def page_of_tasks(
        self, where: TaskFilter, limit: int, offset: int = 0, before: int | None = None
    ) -> tuple[list[Task], int | None]:
        """Up to `limit` matching tasks, newest first, skipping `offset`, and the cursor to continue from.

        `before` (a cursor this returned) continues a scan without counting the rows already
        passed again: each page is one indexed range, however deep into a million rows it is.
        """
        sql, params = where.where()
        if before is not None:
            sql += (" AND" if sql else " WHERE") + " rowid < ?"
            params.append(before)
        rows = self.reader().execute(
            f"SELECT rowid, {_ALL} FROM tasks{sql} ORDER BY rowid DESC LIMIT ? OFFSET ?", [*params, limit, offset]
        ).fetchall()
        return [task_from_row(r[1:]) for r in rows], (rows[-1][0] if rows else None)

    def count_tasks(self, where: TaskFilter) -> tuple[int, bool]:
        """How many tasks match, and whether that is exact: counting stops past COUNT_LIMIT.

        Counting a million index entries takes tens of milliseconds and grows with the history;
        "more than 100,000" is as useful to a person, and costs a bounded time.
        """
        sql, params = where.where()
        found = self.reader().execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM tasks{sql} LIMIT ?)", [*params, COUNT_LIMIT + 1]
        ).fetchone()[0]
        return min(found, COUNT_LIMIT), found <= COUNT_LIMIT

    def list_tasks(self, where: TaskFilter, limit: int, offset: int = 0) -> tuple[list[Task], int, bool]:
        """A page of matching tasks, newest first, and how many match in all (see count_tasks); limit 0: every one."""
        tasks, _ = self.page_of_tasks(where, limit if limit else -1, offset)
        if limit == 0 or (len(tasks) < limit and (tasks or not offset)):
            return tasks, offset + len(tasks), True
        return tasks, *self.count_tasks(where)

    def batch_tasks(self, batch_id: str) -> list[Task]:
        return [task_from_row(r) for r in self.reader().execute(_BATCH_TASKS, (batch_id,))]

    def state_counts(self) -> dict[str, int]:
        """Tasks by state, over the whole history (a worker thread's job: an index scan)."""
        return dict(self.reader().execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())

    def batch_summary(self, batch_id: str, problems: int) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
        """A batch's task counts by state, and its first `problems` tasks that did not complete
        (task_id, state, exit_code, error, name, array_index): the fields of protocol.TaskBrief."""
        db = self.reader()
        counts = dict(db.execute(_BATCH_COUNTS, (batch_id,)).fetchall())
        return counts, db.execute(_BATCH_PROBLEMS, (batch_id, problems)).fetchall()


def _column_defaults(db: sqlite3.Connection, table: str) -> dict[str, Any]:
    """The value an insert that leaves a column out stores there, for each column of `table`
    (outside its primary key) that has one: its DEFAULT, or NULL for a column that may be NULL."""
    defaults = {}
    for _cid, name, _type, notnull, default, pk in db.execute(f"PRAGMA table_info({table})").fetchall():
        if pk:
            continue
        if default is None:
            if not notnull:
                defaults[name] = None
            continue
        try:
            defaults[name] = db.execute(f"SELECT {default}").fetchone()[0]  # our own schema's text
        except sqlite3.Error:
            pass  # then the column is always written
    return defaults


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the schema up to date, one migration per transaction; refuse a newer schema untouched."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database {path} has schema version {version}, newer than this HakuRiver knows ({len(MIGRATIONS)}): "
            "it was written by a newer release; upgrade HakuRiver to open it (the database was not changed)"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"cannot upgrade database {path} to schema version {number}: {exc}") from None
