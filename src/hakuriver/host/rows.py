"""Rows of the store's tables <-> the core's records: each task column named once.

`TASK_COLUMNS` names every column of `tasks` as the `Task` field it holds, with how its value is
stored; the store derives every statement from it, and the row <-> `Task` conversion here is
derived from it too, by name (a test checks both against the migrated schema and the model).
A new task field is one `Column` here and one migration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from operator import attrgetter
from typing import Any

import msgspec

from hakuriver.core.cores import CoreSet, format_core_ids, parse_core_ids
from hakuriver.core.model import Attempt, Node, Task
from hakuriver.core.states import NodeState, TaskState


def _same(value: Any) -> Any:
    return value


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()  # several times faster than json.dumps: a batch holds thousands


def _attempts_from_db(text: str) -> list[Attempt]:
    return [Attempt(**{**a, "state": TaskState(a["state"]), "core_ids": tuple(a["core_ids"])}) for a in json.loads(text)]


@dataclass(frozen=True)
class Column:
    name: str
    #: model value -> what SQLite stores, and back
    to_db: Callable[[Any], Any] = _same
    from_db: Callable[[Any], Any] = _same
    #: may change after submission (written by updates; the rest only by the insert)
    changes: bool = True


#: every column of `tasks`, named as the `Task` field it holds (a test checks both against the migrated schema)
TASK_COLUMNS: tuple[Column, ...] = (
    Column("task_id", changes=False),
    Column("batch_id", changes=False),
    Column("state", attrgetter("value"), TaskState),
    Column("command", changes=False),
    Column("args", _json_text, json.loads, changes=False),
    Column("env", _json_text, json.loads, changes=False),
    Column("cores", changes=False),
    Column("cwd", changes=False),
    Column("target_node", changes=False),
    Column("node"),
    Column("core_ids", format_core_ids, parse_core_ids),
    Column("exit_code"),
    Column("signal"),
    Column("error"),
    Column("submitted_at", changes=False),
    Column("started_at"),
    Column("finished_at"),
    Column("stdout_path"),
    Column("stderr_path"),
    Column("kill_requested", int, bool),
    Column("name", changes=False),
    Column("owner", changes=False),
    Column("cpu_user_seconds"),
    Column("cpu_system_seconds"),
    Column("max_rss_bytes"),
    Column("time_limit", changes=False),
    Column("retries", changes=False),
    Column("after", _json_text, json.loads, changes=False),
    Column("throttle", changes=False),
    Column("attempt"),
    Column("attempts", _json_text, _attempts_from_db),
    Column("unix_user"),
)
NODE_COLUMNS = ("name", "core_ids", "memory_bytes", "state", "last_heartbeat")
#: the columns an update writes (the rest only the insert)
CHANGING = [c for c in TASK_COLUMNS if c.changes]

_task_values = attrgetter(*(c.name for c in TASK_COLUMNS))
_change_values = attrgetter(*(c.name for c in CHANGING), "task_id")
_TO_DB = [(i, c.to_db) for i, c in enumerate(TASK_COLUMNS) if c.to_db is not _same]
_CHANGE_TO_DB = [(i, c.to_db) for i, c in enumerate(CHANGING) if c.to_db is not _same]
_FROM_DB = [(i, c.from_db) for i, c in enumerate(TASK_COLUMNS) if c.from_db is not _same]
_TASK_FIELDS = tuple(c.name for c in TASK_COLUMNS)


def _converted(values: tuple[Any, ...], converters: list[tuple[int, Callable[[Any], Any]]]) -> list[Any]:
    row = list(values)
    for i, convert in converters:
        row[i] = convert(row[i])
    return row


def task_row(t: Task) -> list[Any]:
    return _converted(_task_values(t), _TO_DB)


def change_row(t: Task) -> list[Any]:
    return _converted(_change_values(t), _CHANGE_TO_DB)


def _values(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """obj -> the tuple of these attributes (attrgetter gives a bare value for one name)."""
    if len(names) > 1:
        return attrgetter(*names)
    return lambda obj: tuple(getattr(obj, name) for name in names)


def _fresh(name: str) -> Any:
    """What a new `Task` holds in field `name` (its default; MISSING if it has none)."""
    f = next(f for f in fields(Task) if f.name == name)
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _same_value(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # (1 == 1.0 == True: SQLite would store another type)


class NewRows:
    """Rows for new tasks: all of TASK_COLUMNS, or, when each task holds the schema's own default
    in every column that only its later life changes (the common case), the other columns only.

    Which columns those are is read from the migrated schema (`defaults`: column -> its DEFAULT's
    value, for each column that has one), so a column added later counts only once the schema
    and the model agree on its default. Fewer values to convert and bind make a 1,000-task insert
    about a third faster, and that insert is on the way from a submission to its first start.
    """

    def __init__(self, defaults: dict[str, Any]) -> None:
        fresh = {c.name: _fresh(c.name) for c in CHANGING}
        late = [c for c in CHANGING if c.name in defaults and fresh[c.name] is not MISSING
                and _same_value(c.to_db(fresh[c.name]), defaults[c.name])]
        self._late_values = _values([c.name for c in late])
        self._fresh_values = tuple(fresh[c.name] for c in late)
        lean = [c for c in TASK_COLUMNS if c not in late]
        #: the columns of a lean row, in its order
        self.lean_columns = [c.name for c in lean]
        self._lean_values = _values(self.lean_columns)
        self._lean_to_db = [(i, c.to_db) for i, c in enumerate(lean) if c.to_db is not _same]

    def lean(self, tasks: list[Task]) -> list[list[Any]] | None:
        """The tasks' rows in `lean_columns` order; None if a task holds other than the default in
        a column left out (then each needs its full `task_row`)."""
        late, fresh = self._late_values, self._fresh_values
        if any(late(t) != fresh for t in tasks):
            return None
        values, to_db = self._lean_values, self._lean_to_db
        return [_converted(values(t), to_db) for t in tasks]


def task_from_row(r: tuple[Any, ...]) -> Task:
    return Task(**dict(zip(_TASK_FIELDS, _converted(r, _FROM_DB))))


def node_row(n: Node) -> list[Any]:
    """The node's values in NODE_COLUMNS order: its cores are stored as the IDs it has."""
    values = {"name": n.name, "core_ids": format_core_ids(n.cores.all), "memory_bytes": n.memory_bytes,
              "state": n.state.value, "last_heartbeat": n.last_heartbeat}
    return [values[c] for c in NODE_COLUMNS]


def node_from_row(r: tuple[Any, ...]) -> Node:
    row = dict(zip(NODE_COLUMNS, r))
    return Node(name=row["name"], cores=CoreSet(parse_core_ids(row["core_ids"])), memory_bytes=row["memory_bytes"],
                state=NodeState(row["state"]), last_heartbeat=row["last_heartbeat"])
