"""Every message that crosses the network, both directions, and the routes they travel on.

The host, the runners and the client all import these types; nothing else builds a JSON body
by hand. They are light `Message` classes (fields from annotations, no dataclasses, no msgspec
at import), so that importing this module costs the client almost nothing; their two codecs
(codec.py) are re-exported here, so that `protocol` is all a caller needs. Only validation
lives here, no behaviour.
"""

from __future__ import annotations

import re

from hakuriver.codec import DecodeError, Message, decode, dumps, encode, loads  # noqa: F401 - re-exported
from hakuriver.core.states import FINAL_STATES as _FINAL
from hakuriver.core.states import PROBLEM_STATES as _PROBLEMS
from hakuriver.core.states import TaskState

#: the task states by name, in lifecycle order
STATES = tuple(s.value for s in TaskState)
#: states that never change again (lost may still take the real outcome: SPEC §6)
FINAL_STATES = frozenset(s.value for s in _FINAL)
#: final states of a task that did not complete
PROBLEM_STATES = tuple(s for s in STATES if s in {p.value for p in _PROBLEMS})

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
    #: how many tasks match the filters in all; counting stops at a limit (then total_exact is false)
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
_ID_PREFIX = re.compile(rf"^[0-9a-fA-F]{{{MIN_PREFIX}}}(?:-[0-9a-fA-F-]{{0,27}})?$")


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
