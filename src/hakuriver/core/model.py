"""The in-memory task and node records (domain shape: not SQL rows, not JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hakuriver.core.cores import CoreQueues, CoreSet
from hakuriver.core.states import NodeState, TaskState


def run_key(task_id: str, attempt: int) -> str:
    """How a node names one attempt of a task: the task ID, with ".N" from the second attempt on
    (so a first attempt is named as before attempts existed, and a journal from then still reads)."""
    return task_id if attempt == 1 else f"{task_id}.{attempt}"


def split_run_key(key: str) -> tuple[str, int]:
    task_id, _, attempt = key.partition(".")  # task IDs are UUIDs: no dot of their own
    return task_id, int(attempt) if attempt.isdigit() else 1


@dataclass(slots=True)
class Attempt:
    """One earlier attempt of a task (the current one is the task's own fields)."""

    attempt: int
    state: TaskState
    node: str = ""
    core_ids: tuple[int, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    #: False for an attempt whose launch never reached its node (lost before it started, and the
    #: node came back without it): queued again without counting against --retries
    delivered: bool = True
    unix_user: str = ""


@dataclass(slots=True)
class Task:
    task_id: str
    command: str
    args: list[str]
    env: dict[str, str]
    cores: int
    submitted_at: float
    cwd: str = ""
    #: the node the user asked for; empty = any
    target_node: str = ""
    batch_id: str = ""
    state: TaskState = TaskState.PENDING
    node: str = ""
    core_ids: tuple[int, ...] = ()
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    stdout_path: str = ""
    stderr_path: str = ""
    #: the user asked to kill it while its runner held it; the runner's report finalises it
    kill_requested: bool = False
    #: the user's label (--name); empty = none
    name: str = ""
    #: who submitted it
    owner: str = ""
    #: resource use of its process tree, measured when it was reaped; None = unknown
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None
    #: seconds it may run before the node ends it (state timeout); None = no limit
    time_limit: float | None = None
    #: how many more attempts it gets when an attempt ends failed, timeout or lost
    retries: int = 0
    #: task and batch IDs that must all complete before it may start (--after)
    after: list[str] = field(default_factory=list)
    #: at most this many tasks of its batch run at once (--array RANGE%K); 0 = no limit
    throttle: int = 0
    #: the number of its current attempt, from 1
    attempt: int = 1
    #: its earlier attempts, oldest first
    attempts: list[Attempt] = field(default_factory=list)
    #: the Unix user its current attempt runs as on its node (reported by the runner)
    unix_user: str = ""

    @property
    def run_key(self) -> str:
        return run_key(self.task_id, self.attempt)

    @property
    def retries_used(self) -> int:
        """Earlier attempts that count against --retries: all but those whose launch never reached their node."""
        return sum(1 for a in self.attempts if a.delivered)


@dataclass(slots=True)
class Node:
    name: str
    cores: CoreSet
    memory_bytes: int = 0
    state: NodeState = NodeState.OFFLINE
    last_heartbeat: float = 0.0
    #: IDs of the tasks holding cores here (assigning or running), those queued ahead too
    task_ids: set[str] = field(default_factory=set)
    #: per busy core, the tasks queued behind the one using it (core/ahead.py); absent = none
    queued: CoreQueues = field(default_factory=CoreQueues)
    #: its keeper holds launches for busy cores: tasks may be queued ahead here
    queues_ahead: bool = False
    #: the ID of the runner serving it (not stored: after a host restart, the first to heartbeat)
    runner_id: str = ""
    #: its runner said it stops: no new task goes here until a runner heartbeats again (not stored)
    leaving: bool = False

    @property
    def total_cores(self) -> int:
        return self.cores.total

    @property
    def free_cores(self) -> int:
        return self.cores.free_count

    @property
    def running_tasks(self) -> int:
        """Tasks using cores here now, not counting those queued behind them."""
        return len(self.task_ids) - self.queued.total
