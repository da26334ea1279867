"""Every message that crosses the network, both directions, and the routes they travel on.

The host, the runners and the client all import these types; nothing else builds a JSON body
by hand. msgspec validates types and required fields on decode and is cheap to import, which
keeps the client's start-up short. Only validation lives here, no behaviour.
"""

from __future__ import annotations

import re
import uuid

import msgspec

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


class ErrorReply(msgspec.Struct):
    error: str


# ---- client -> host ----------------------------------------------------------------------
class TaskSpec(msgspec.Struct):
    """One command to run: what `hakuriver.client ... -- CMD ARGS` sends."""

    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    cores: int = 1
    #: the client's working directory; used on the node if it exists there
    cwd: str = ""
    #: run only on this node; empty = any
    node: str = ""


class SubmitRequest(msgspec.Struct):
    tasks: list[TaskSpec]
    #: give the tasks one batch ID (always so when there is more than one)
    batch: bool = False


class SubmitReply(msgspec.Struct):
    task_ids: list[str]
    batch_id: str = ""


class TaskView(msgspec.Struct):
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


class NodeView(msgspec.Struct):
    name: str
    state: str
    total_cores: int
    free_cores: int
    running_tasks: int
    memory_bytes: int
    last_heartbeat: float


class TaskBrief(msgspec.Struct):
    task_id: str
    state: str
    exit_code: int | None
    error: str


class BatchView(msgspec.Struct):
    batch_id: str
    total: int
    #: task count by state name
    counts: dict[str, int]
    #: every task is in a final state (lost counts as final here)
    done: bool
    #: the first tasks that did not complete (failed, killed, lost), for the user to look at
    problems: list[TaskBrief]


class KillReply(msgspec.Struct):
    task_id: str
    state: str
    message: str


# ---- runner -> host ----------------------------------------------------------------------
class NodeInfo(msgspec.Struct):
    name: str
    core_ids: list[int]
    memory_bytes: int = 0


class Heartbeat(msgspec.Struct):
    node: NodeInfo
    #: every task the runner runs or still has an undelivered result for
    held: list[str] = []
    #: how long the host may hold the request open waiting for orders, seconds
    wait: float = 0.0


class TaskStarted(msgspec.Struct):
    task_id: str
    started_at: float
    stdout_path: str = ""
    stderr_path: str = ""


class TaskFinished(msgspec.Struct):
    task_id: str
    finished_at: float
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    killed: bool = False
    started_at: float | None = None
    stdout_path: str = ""
    stderr_path: str = ""


class Report(msgspec.Struct):
    node: str
    started: list[TaskStarted] = []
    finished: list[TaskFinished] = []


class Ack(msgspec.Struct):
    #: finished results the host has committed; the runner may forget them
    task_ids: list[str]


# ---- host -> runner ----------------------------------------------------------------------
class LaunchOrder(msgspec.Struct):
    task_id: str
    command: str
    args: list[str]
    env: dict[str, str]
    core_ids: list[int]
    cwd: str = ""


class Orders(msgspec.Struct):
    launch: list[LaunchOrder] = []
    kill: list[str] = []


# ---- validation ----------------------------------------------------------------------------
def is_task_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


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


encode = msgspec.json.encode


def decode(data: bytes, kind: type):  # noqa: ANN201 - returns an instance of `kind`
    return msgspec.json.decode(data, type=kind)


DecodeError = msgspec.DecodeError
