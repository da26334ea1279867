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

# ---- routes (who may call each, and what it takes and gives: host/routes.py) ---------------
TASKS = "/api/tasks"                       # POST SubmitRequest -> SubmitReply; GET ?filters -> TaskList
TASK = "/api/tasks/{task_id}"              # GET -> TaskView (a unique ID prefix works too, here and below)
TASK_LOGS = "/api/tasks/{task_id}/logs"    # GET ?stream=stdout|stderr&offset=&tail=&wait= -> the bytes (see LOG_*)
TASK_WAIT = "/api/tasks/{task_id}/wait"    # GET ?timeout=s -> TaskView (long-poll until final)
TASK_KILL = "/api/tasks/{task_id}/kill"    # POST -> KillReply
BATCH = "/api/batches/{batch_id}"          # GET -> BatchView (counts by state)
BATCH_TASKS = "/api/batches/{batch_id}/tasks"  # GET -> list[TaskView]
BATCH_WAIT = "/api/batches/{batch_id}/wait"    # GET ?timeout=s -> BatchView (long-poll until all final)
BATCH_KILL = "/api/batches/{batch_id}/kill"    # POST -> KillReply (task_id = the batch ID)
TASK_RETRY = "/api/tasks/{task_id}/retry-failed"       # POST -> SubmitReply (a new batch)
BATCH_RETRY = "/api/batches/{batch_id}/retry-failed"   # POST -> SubmitReply (a new batch)
NODES = "/api/nodes"                       # GET -> list[NodeView]
RUNNER_HEARTBEAT = "/api/runner/heartbeat"  # POST Heartbeat -> Orders (long-poll)
RUNNER_REPORT = "/api/runner/report"       # POST Report -> Ack
HEALTH = "/api/health"                     # GET -> {"ok": true}
OPENAPI = "/api/openapi.json"              # GET -> the OpenAPI document of ROUTES (host/openapi.py)
EVENTS = "/api/events"                     # GET ?task=ID -> server-sent events for the dashboard (host/live.py)
LOGIN = "/api/login"                       # POST LoginRequest -> Me, and the dashboard's cookie
LOGOUT = "/api/logout"                     # POST -> the cookie cleared
ME = "/api/me"                             # GET -> Me: who the token or cookie belongs to
METRICS = "/metrics"                       # GET -> Prometheus text format (host/metrics.py)
DASHBOARD = "/"                            # GET -> the dashboard's page
ASSET = "/ui/{name}"                       # GET -> one of the dashboard's files (host/dashboard/)
#: the dashboard's cookie: a user's token, HttpOnly and SameSite=Strict
TOKEN_COOKIE = "hakuriver_token"

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
#: seconds: the longest time limit (about 31 years)
MAX_TIME_LIMIT = 1e9
#: the most --retries a task may ask for
MAX_RETRIES = 100
#: the most --after IDs a task may name
MAX_AFTER = 100
#: --wait's exit code for a task that ran out of time (like coreutils `timeout`)
EXIT_TIMEOUT = 124

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ErrorReply(Message):
    error: str


class LoginRequest(Message):
    token: str


class Me(Message):
    """Who a token belongs to."""

    name: str
    admin: bool = False


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
    #: seconds it may run; None = the host's [tasks] default_time_limit
    time_limit: float | None = None
    #: attempts after the first when one ends failed, timeout or lost
    retries: int = 0
    #: task or batch IDs (or unique prefixes) that must all complete first
    after: list[str] = []
    #: at most this many tasks of its batch run at once (--array RANGE%K); 0 = no limit
    throttle: int = 0


class SubmitRequest(Message):
    tasks: list[TaskSpec]
    #: give the tasks one batch ID (always so when there is more than one)
    batch: bool = False


class SubmitReply(Message):
    task_ids: list[str]
    batch_id: str = ""


class AttemptView(Message):
    """One attempt of a task: the earlier ones and, last, the current one."""

    attempt: int
    state: str
    node: str = ""
    core_ids: list[int] = []
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    #: false for an attempt whose launch never reached its node (queued again, not counted against retries)
    delivered: bool = True
    #: the Unix user it ran as on its node
    unix_user: str = ""


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
    #: the user who submitted it (their token's name); only they or an admin may kill, read or retry it
    owner: str = ""
    #: the Unix user its current attempt ran as on its node (the owner's account when the runner is root)
    unix_user: str = ""
    #: CPU time of its process tree, in user and kernel mode, and its peak resident memory; None until known
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None
    time_limit: float | None = None
    retries: int = 0
    after: list[str] = []
    throttle: int = 0
    #: the number of its current attempt, and every attempt so far (the current one last)
    attempt: int = 1
    attempts: list[AttemptView] = []
    #: for a pending task: what it waits for, in one line
    pending_reason: str = ""


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
    #: its runner said it stops: no new task is placed there (its running ones go on under the keeper)
    leaving: bool = False


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
    #: its keeper holds a launch whose core is still busy and starts it when the core frees:
    #: the host may queue short batch tasks there ahead of free cores
    queues_ahead: bool = False
    #: the runner's own ID, kept in its state folder (the same after a restart): while a node is
    #: online, the host refuses another runner under its name ("" = not said: not checked)
    runner_id: str = ""


class Heartbeat(Message):
    node: NodeInfo
    #: every attempt the runner runs or still has an undelivered result for, by run key
    #: (the task ID, with ".N" for attempt N >= 2: core/model.py run_key)
    held: list[str] = []
    #: how long the host may hold the request open waiting for orders, seconds
    wait: float = 0.0
    #: held tasks already being killed or already ended here: a kill order would change nothing
    ending: list[str] = []
    #: the runner stops (its tasks keep running under the keeper): send nothing new until a runner is back
    leaving: bool = False


class TaskStarted(Message):
    task_id: str
    started_at: float
    stdout_path: str = ""
    stderr_path: str = ""
    attempt: int = 1
    #: the Unix user it runs as
    unix_user: str = ""


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
    #: the node ended it: its time limit ran out
    timed_out: bool = False
    attempt: int = 1
    unix_user: str = ""
    #: queued behind a busy core, it did not start within its launch's wait_limit: handed back
    #: to the host unrun (the same attempt goes back to the queue)
    returned: bool = False


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
    attempt: int = 1
    #: seconds it may run, enforced on the node; None = no limit
    time_limit: float | None = None
    #: the earlier attempt whose output <id>.out and <id>.err hold, to move aside as <id>.N.out first; 0 = none
    earlier_output: int = 0
    #: who submitted it: a runner running as root runs it as the Unix user of this name
    owner: str = ""
    #: seconds it may wait for its cores while they are still busy here (it was queued ahead)
    #: before the node hands it back unrun; None = to a node that queues nothing ahead
    wait_limit: float | None = None


class Orders(Message):
    launch: list[LaunchOrder] = []
    #: run keys of the attempts to end
    kill: list[str] = []


class Ack(Message):
    """The host's answer to a Report."""

    #: run keys of the finished results the host has committed; the runner may forget them
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


def parse_states(text: str) -> tuple[str, ...]:
    """The states of a `state=` filter ("failed, killed"); ValueError names an unknown one."""
    states = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = next((s for s in states if s not in STATES), None)
    if unknown is not None:
        raise ValueError(f"unknown state {unknown!r} (states: {', '.join(STATES)})")
    return states


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
    return _control_problem(spec) or (name_problem(spec.name) if spec.name else None)


def _control_problem(spec: TaskSpec) -> str | None:
    if spec.time_limit is not None and not 0 < spec.time_limit < MAX_TIME_LIMIT:
        return f"a time limit is more than 0 seconds and less than {MAX_TIME_LIMIT:g}, got {spec.time_limit}"
    if not 0 <= spec.retries <= MAX_RETRIES:
        return f"--retries is a whole number from 0 to {MAX_RETRIES}, got {spec.retries}"
    if spec.throttle < 0:
        return f"an --array throttle (%K) is a whole number >= 1, got {spec.throttle}"
    if len(spec.after) > MAX_AFTER:
        return f"--after names at most {MAX_AFTER} IDs, got {len(spec.after)}"
    bad = next((i for i in spec.after if not is_id_or_prefix(i)), None)
    if bad is not None:
        return f"--after: malformed ID {bad!r}: a task or batch ID, or at least its first {MIN_PREFIX} characters"
    return None
