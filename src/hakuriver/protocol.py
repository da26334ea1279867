"""Every message that crosses the network, both directions, and the routes they travel on.

The host, the runners and the client all import these types; nothing else builds a JSON body
by hand. They are light `Message` classes (fields from annotations, no dataclasses, no msgspec
at import), so that importing this module costs the client almost nothing. Two codecs:
- `encode`/`decode` use msgspec, which validates every type and required field on decode: the
  host and the runners use them for everything they receive from the network;
- `dumps`/`loads` use the standard library's json: the client uses them for its requests and the
  host's replies, and so never loads msgspec (about 25 ms of start-up).
Only validation lives here, no behaviour.
"""

from __future__ import annotations

import json
import re

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

class Message:
    """Base of every wire message: fields from the class annotations, defaults from class attributes.

    A list or dict default is copied for each instance. Equality and repr are by fields.
    """

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = tuple(cls.__dict__.get("__annotations__", {}))
        cls._fields = names
        cls._defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if len(args) > len(cls._fields):
            raise TypeError(f"{cls.__name__} takes at most {len(cls._fields)} values")
        values = dict(zip(cls._fields, args))
        for name, value in kwargs.items():
            if name not in cls._fields or name in values:
                raise TypeError(f"{cls.__name__}: unexpected or repeated field {name!r}")
            values[name] = value
        for name in cls._fields:
            if name in values:
                setattr(self, name, values[name])
            elif name in cls._defaults:
                default = cls._defaults[name]
                setattr(self, name, type(default)(default) if isinstance(default, (list, dict)) else default)
            else:
                raise TypeError(f"{cls.__name__}: missing field {name!r}")

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed: bulk paths copy every field, including ones added later."""
        return type(self)(**{**{f: getattr(self, f) for f in self._fields}, **changes})

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


# ---- routes ------------------------------------------------------------------------------
TASKS = "/api/tasks"                       # POST SubmitRequest -> SubmitReply; GET ?filters -> TaskList
TASK = "/api/tasks/{task_id}"              # GET -> TaskView (a unique ID prefix works too, here and below)
TASK_LOGS = "/api/tasks/{task_id}/logs"    # GET ?stream=stdout|stderr&offset=&tail=&wait= -> the bytes (see LOG_*)
TASK_WAIT = "/api/tasks/{task_id}/wait"    # GET ?timeout=s -> TaskView (long-poll until final)
TASK_KILL = "/api/tasks/{task_id}/kill"    # POST -> KillReply
BATCH = "/api/batches/{batch_id}"          # GET -> BatchView (counts by state)
BATCH_TASKS = "/api/batches/{batch_id}/tasks"  # GET -> list[TaskView]
BATCH_WAIT = "/api/batches/{batch_id}/wait"    # GET ?timeout=s -> BatchView (long-poll until all final)
BATCH_KILL = "/api/batches/{batch_id}/kill"    # POST -> KillReply (task_id = the batch ID)
NODES = "/api/nodes"                       # GET -> list[NodeView]
RUNNER_HEARTBEAT = "/api/runner/heartbeat"  # POST Heartbeat -> Orders (long-poll)
RUNNER_REPORT = "/api/runner/report"       # POST Report -> Ack
HEALTH = "/api/health"                     # GET -> {"ok": true}

#: the host refuses larger request bodies (a 10,000-task batch is about 2 MB)
MAX_BODY_BYTES = 32 * 1024 * 1024
#: the longest a long-poll may be asked to wait, seconds
MAX_WAIT_SECONDS = 60.0
#: reply headers of TASK_LOGS: the file offset of the body's first byte (read on from offset + its
#: length), and the task's state before the file was read (final: the body reaches the log's end)
LOG_OFFSET_HEADER = "x-hakuriver-offset"
LOG_STATE_HEADER = "x-hakuriver-state"
#: a short ID: at least this many leading characters of a task or batch ID
MIN_PREFIX = 8
#: --list's default page size
DEFAULT_LIST_LIMIT = 50

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ErrorReply(Message):
    error: str


# ---- client -> host ----------------------------------------------------------------------
class TaskSpec(Message):
    """One command to run: what `hakuriver.client ... -- CMD ARGS` sends."""

    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    cores: int = 1
    #: the client's working directory; used on the node if it exists there
    cwd: str = ""
    #: run only on this node; empty = any
    node: str = ""
    #: a label to find it by (--name); empty = none
    name: str = ""


class SubmitRequest(Message):
    tasks: list[TaskSpec]
    #: give the tasks one batch ID (always so when there is more than one)
    batch: bool = False
    #: who submits (the client's login name), recorded as each task's owner
    user: str = ""


class SubmitReply(Message):
    task_ids: list[str]
    batch_id: str = ""


class TaskView(Message):
    task_id: str
    state: str
    command: str
    args: list[str]
    env: dict[str, str]
    cores: int
    node: str
    core_ids: list[int]
    exit_code: int | None
    signal: int | None
    error: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    stdout_path: str
    stderr_path: str
    cwd: str
    target_node: str = ""
    batch_id: str = ""
    kill_requested: bool = False
    name: str = ""
    owner: str = ""
    #: CPU time of its process tree, in user and kernel mode, and its peak resident memory; None until known
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None


class TaskList(Message):
    """One page of `--list`: newest first."""

    tasks: list[TaskView]
    #: how many tasks match the filters in all; counting stops at 100,000 (then total_exact is false)
    total: int
    limit: int
    offset: int = 0
    total_exact: bool = True


class LogView(Message):
    """`--logs --json`: the text read, and the offset to read on from."""

    task_id: str
    stream: str
    text: str
    offset: int


class NodeView(Message):
    name: str
    state: str
    total_cores: int
    free_cores: int
    running_tasks: int
    memory_bytes: int
    last_heartbeat: float


class TaskBrief(Message):
    task_id: str
    state: str
    exit_code: int | None
    error: str
    name: str = ""
    #: its --array index, if it has one
    array_index: str | None = None


class BatchView(Message):
    batch_id: str
    total: int
    #: task count by state name
    counts: dict[str, int]
    #: every task is in a final state (lost counts as final here)
    done: bool
    #: the first tasks that did not complete (failed, killed, lost), for the user to look at
    problems: list[TaskBrief]


class KillReply(Message):
    task_id: str
    state: str
    message: str


# ---- runner -> host ----------------------------------------------------------------------
class NodeInfo(Message):
    name: str
    core_ids: list[int]
    memory_bytes: int = 0


class Heartbeat(Message):
    node: NodeInfo
    #: every task the runner runs or still has an undelivered result for
    held: list[str] = []
    #: how long the host may hold the request open waiting for orders, seconds
    wait: float = 0.0
    #: held tasks already being killed or already ended here: a kill order would change nothing
    ending: list[str] = []


class TaskStarted(Message):
    task_id: str
    started_at: float
    stdout_path: str = ""
    stderr_path: str = ""


class TaskFinished(Message):
    task_id: str
    finished_at: float
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    killed: bool = False
    started_at: float | None = None
    stdout_path: str = ""
    stderr_path: str = ""
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None


class Report(Message):
    node: str
    started: list[TaskStarted] = []
    finished: list[TaskFinished] = []
    #: given, the runner takes orders in the Ack (like a heartbeat's `held`): the cores freed by
    #: these results are given their next tasks in the same round trip
    held: list[str] | None = None
    ending: list[str] = []


# ---- host -> runner ----------------------------------------------------------------------
class LaunchOrder(Message):
    task_id: str
    command: str
    args: list[str]
    env: dict[str, str]
    core_ids: list[int]
    cwd: str = ""


class Orders(Message):
    launch: list[LaunchOrder] = []
    kill: list[str] = []


class Ack(Message):
    """The host's answer to a Report."""

    #: finished results the host has committed; the runner may forget them
    task_ids: list[str]
    #: for a Report with `held`: what to do next
    orders: Orders | None = None


# ---- validation ----------------------------------------------------------------------------
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ID_PREFIX = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F-]{0,27})?$")


def is_task_id(text: str) -> bool:
    """A canonical UUID, as task and batch IDs are (checked without the uuid module: start-up time)."""
    return _UUID.match(text) is not None


def is_id_or_prefix(text: str) -> bool:
    """A full ID, or its first MIN_PREFIX or more characters (a short ID, like git's)."""
    return _UUID.match(text) is not None or _ID_PREFIX.match(text) is not None


def name_problem(name: str) -> str | None:
    if not 1 <= len(name) <= 128 or not name.isprintable():
        return f"a name is 1 to 128 printable characters, got {name!r}"
    return None


def spec_problem(spec: TaskSpec) -> str | None:
    """Why this task spec is unacceptable, or None. Shared by the client and the host."""
    if spec.cores < 1:
        return f"cores must be a whole number >= 1, got {spec.cores}"
    if not spec.command.strip():
        return "the command is empty: put it after '--', e.g. hakuriver.client -- python -V"
    if "\0" in spec.command or any("\0" in a for a in spec.args):
        return "the command and its arguments may not contain NUL bytes"
    for name, value in spec.env.items():
        if not ENV_NAME.match(name):
            return f"invalid environment variable name {name!r} (letters, digits, _; not starting with a digit)"
        if "\0" in value:
            return f"environment variable {name} may not contain NUL bytes"
    return name_problem(spec.name) if spec.name else None


# ---- codecs --------------------------------------------------------------------------------
class DecodeError(ValueError):
    """A body that is not valid JSON or not the expected message; the text says what is wrong."""


def encode(obj: Any) -> bytes:
    import msgspec  # host and runners only; see the module docstring

    return msgspec.json.encode(obj, enc_hook=_fields_of)


def _fields_of(obj: Any) -> Any:
    """msgspec's hook for types it does not know: a message is its fields (msgspec recurses)."""
    if isinstance(obj, Message):
        return obj.__dict__
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def decode(data: bytes, kind: Any) -> Any:
    """Parse and validate: wrong types, missing fields and malformed JSON raise DecodeError."""
    import msgspec

    try:
        return _from_struct(msgspec.json.decode(data, type=_validator(kind)))
    except msgspec.DecodeError as exc:  # msgspec.ValidationError is a subclass
        raise DecodeError(str(exc)) from None


def dumps(obj: Any) -> bytes:
    return json.dumps(_plain(obj), separators=(",", ":")).encode()


def loads(data: bytes, kind: Any) -> Any:
    """Build `kind` (a message class, or list[...] of one) from a trusted JSON reply, unchecked."""
    try:
        return _build(json.loads(data), kind)
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(str(exc)) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, Message):
        return {f: _plain(getattr(obj, f)) for f in obj._fields}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _build(value: Any, kind: Any) -> Any:
    if getattr(kind, "__origin__", None) is list:  # list[SomeMessage]
        return [_build(v, kind.__args__[0]) for v in value]
    if not (isinstance(kind, type) and issubclass(kind, Message)):
        return value
    nested = _nested(kind)
    return kind(**{k: (_build(v, nested[k]) if k in nested and v is not None else v)
                   for k, v in value.items() if k in kind._fields})


def _field_types(cls: type[Message]) -> dict[str, Any]:
    """The evaluated annotations of a message's own fields."""
    import typing

    hints = typing.get_type_hints(cls, globalns={**globals(), "Any": typing.Any})
    return {name: hints[name] for name in cls._fields}


def _message_in(tp: Any) -> Any:
    """The message class a field holds (directly, optionally, or as a list of them), else None."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        item = _message_in(args[0])
        return list[item] if item is not None else None
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return _message_in(present[0]) if len(present) == 1 else None
    return tp if isinstance(tp, type) and issubclass(tp, Message) else None


_NESTED_CACHE: dict[type, dict[str, Any]] = {}


def _nested(cls: type[Message]) -> dict[str, Any]:
    """Fields holding other messages, e.g. BatchView.problems -> list of TaskBrief, Ack.orders -> Orders."""
    if cls not in _NESTED_CACHE:
        found = {name: _message_in(tp) for name, tp in _field_types(cls).items()}
        _NESTED_CACHE[cls] = {name: target for name, target in found.items() if target is not None}
    return _NESTED_CACHE[cls]


def _messages() -> list[type[Message]]:
    return [obj for obj in globals().values() if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message]


# msgspec Struct twins of the messages, built on first use by the host or a runner: msgspec
# validates against them, then `_from_struct` hands back the Message classes everyone uses.
_STRUCTS: dict[type, Any] = {}
#: Struct twin -> (its Message class, the fields that may hold messages or lists of them)
_FROM_STRUCT: dict[Any, tuple[type[Message], frozenset[str]]] = {}


def _validator(kind: Any) -> Any:
    if not _STRUCTS:
        _build_structs()
    return _twin(kind)


def _twin(tp: Any) -> Any:
    """The type msgspec validates against: each message class replaced by its Struct twin."""
    import functools
    import operator
    import typing

    if isinstance(tp, type) and issubclass(tp, Message):
        return _STRUCTS[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return list[_twin(args[0])]
    if origin is dict:
        return dict[_twin(args[0]), _twin(args[1])]
    if args:  # a union
        return functools.reduce(operator.or_, (_twin(a) for a in args))
    return tp


def _build_structs() -> None:
    import msgspec

    for cls in _messages():  # definition order: a message's parts come before it
        fields = []
        for name, ftype in _field_types(cls).items():
            if name in cls._defaults:
                default = cls._defaults[name]
                if isinstance(default, (list, dict)):
                    default = msgspec.field(default_factory=type(default))
                fields.append((name, _twin(ftype), default))
            else:
                fields.append((name, _twin(ftype)))
        struct = msgspec.defstruct(cls.__name__, fields)
        _STRUCTS[cls] = struct
        _FROM_STRUCT[struct] = (cls, frozenset(_nested(cls)))


def _from_struct(value: Any) -> Any:
    """The Message for a validated Struct twin, converting only the fields that can hold messages."""
    plan = _FROM_STRUCT.get(type(value))
    if plan is not None:
        cls, nested = plan
        obj = cls.__new__(cls)
        fields = obj.__dict__
        for f in cls._fields:
            v = getattr(value, f)
            fields[f] = _from_struct(v) if f in nested else v
        return obj
    if isinstance(value, list):
        return [_from_struct(v) for v in value]
    return value
