"""Every message that crosses the network, both directions, and the routes they travel on.

The host, the runners and the client all import these types; nothing else builds a JSON body
by hand. They are plain dataclasses, so that importing this module costs the client almost
nothing. Two codecs read and write them:
- `encode`/`decode` use msgspec, which validates every type and required field on decode: the
  host and the runners use them for everything they receive from the network;
- `dumps`/`loads` use the standard library's json: the client uses them for its requests and the
  host's replies, and so never loads msgspec (about 25 ms of start-up).
Only validation lives here, no behaviour.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# ---- routes ------------------------------------------------------------------------------
TASKS = "/api/tasks"                       # POST SubmitRequest -> SubmitReply
TASK = "/api/tasks/{task_id}"              # GET -> TaskView
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

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class ErrorReply:
    error: str


# ---- client -> host ----------------------------------------------------------------------
@dataclass
class TaskSpec:
    """One command to run: what `hakuriver.client ... -- CMD ARGS` sends."""

    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cores: int = 1
    #: the client's working directory; used on the node if it exists there
    cwd: str = ""
    #: run only on this node; empty = any
    node: str = ""


@dataclass
class SubmitRequest:
    tasks: list[TaskSpec]
    #: give the tasks one batch ID (always so when there is more than one)
    batch: bool = False


@dataclass
class SubmitReply:
    task_ids: list[str]
    batch_id: str = ""


@dataclass
class TaskView:
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


@dataclass
class NodeView:
    name: str
    state: str
    total_cores: int
    free_cores: int
    running_tasks: int
    memory_bytes: int
    last_heartbeat: float


@dataclass
class TaskBrief:
    task_id: str
    state: str
    exit_code: int | None
    error: str


@dataclass
class BatchView:
    batch_id: str
    total: int
    #: task count by state name
    counts: dict[str, int]
    #: every task is in a final state (lost counts as final here)
    done: bool
    #: the first tasks that did not complete (failed, killed, lost), for the user to look at
    problems: list[TaskBrief]


@dataclass
class KillReply:
    task_id: str
    state: str
    message: str


# ---- runner -> host ----------------------------------------------------------------------
@dataclass
class NodeInfo:
    name: str
    core_ids: list[int]
    memory_bytes: int = 0


@dataclass
class Heartbeat:
    node: NodeInfo
    #: every task the runner runs or still has an undelivered result for
    held: list[str] = field(default_factory=list)
    #: how long the host may hold the request open waiting for orders, seconds
    wait: float = 0.0
    #: held tasks already being killed or already ended here: a kill order would change nothing
    ending: list[str] = field(default_factory=list)


@dataclass
class TaskStarted:
    task_id: str
    started_at: float
    stdout_path: str = ""
    stderr_path: str = ""


@dataclass
class TaskFinished:
    task_id: str
    finished_at: float
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    killed: bool = False
    started_at: float | None = None
    stdout_path: str = ""
    stderr_path: str = ""


@dataclass
class Report:
    node: str
    started: list[TaskStarted] = field(default_factory=list)
    finished: list[TaskFinished] = field(default_factory=list)


@dataclass
class Ack:
    #: finished results the host has committed; the runner may forget them
    task_ids: list[str]


# ---- host -> runner ----------------------------------------------------------------------
@dataclass
class LaunchOrder:
    task_id: str
    command: str
    args: list[str]
    env: dict[str, str]
    core_ids: list[int]
    cwd: str = ""


@dataclass
class Orders:
    launch: list[LaunchOrder] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)


# ---- validation ----------------------------------------------------------------------------
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_task_id(text: str) -> bool:
    """A canonical UUID, as task and batch IDs are (checked without the uuid module: start-up time)."""
    return _UUID.match(text) is not None


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
    return None


# ---- codecs --------------------------------------------------------------------------------
class DecodeError(ValueError):
    """A body that is not valid JSON or not the expected message; the text says what is wrong."""


def encode(obj: Any) -> bytes:
    import msgspec  # host and runners only; see the module docstring

    return msgspec.json.encode(obj)


def decode(data: bytes, kind: Any) -> Any:
    """Parse and validate: wrong types, missing fields and malformed JSON raise DecodeError."""
    import msgspec

    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:  # msgspec.ValidationError is a subclass
        raise DecodeError(str(exc)) from None


def dumps(obj: Any) -> bytes:
    return json.dumps(asdict(obj), separators=(",", ":")).encode()


def loads(data: bytes, kind: Any) -> Any:
    """Build `kind` (a message class, or list[...] of one) from a trusted JSON reply, unchecked."""
    try:
        return _build(json.loads(data), kind)
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(str(exc)) from None


def _build(value: Any, kind: Any) -> Any:
    if getattr(kind, "__origin__", None) is list:
        return [_build(v, kind.__args__[0]) for v in value]
    if not is_dataclass(kind):
        return value
    nested = _NESTED.get(kind, {})
    return kind(**{k: (_build(v, nested[k]) if k in nested else v) for k, v in value.items() if k in _FIELDS[kind]})


_MESSAGES = [obj for obj in list(globals().values()) if isinstance(obj, type) and is_dataclass(obj)]
_BY_NAME = {cls.__name__: cls for cls in _MESSAGES}
_FIELDS = {cls: {f.name for f in fields(cls)} for cls in _MESSAGES}
#: fields holding other messages, e.g. BatchView.problems -> list[TaskBrief]
_NESTED: dict[type, dict[str, Any]] = {}
for _cls in _MESSAGES:
    for _f in fields(_cls):
        _inner = re.fullmatch(r"list\[(\w+)\]|(\w+)", str(_f.type))
        if _inner and (_inner.group(1) or _inner.group(2)) in _BY_NAME:
            _target = _BY_NAME[_inner.group(1) or _inner.group(2)]
            _NESTED.setdefault(_cls, {})[_f.name] = list[_target] if _inner.group(1) else _target
