"""What flows in and out of `Cluster`: the events runners and clients cause, and the effects
the host's shell carries out. Plain records, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

from hakuriver.core.model import Node, Task
from hakuriver.core.states import TaskState


@dataclass(frozen=True)
class TaskChanged:
    task: Task
    #: a new record (submitted), as opposed to a change of an existing one
    created: bool = False


@dataclass(frozen=True)
class NodeChanged:
    node: Node


@dataclass(frozen=True)
class OrdersReady:
    """The node's runner has new launch or kill orders waiting."""

    node: str


Effect = TaskChanged | NodeChanged | OrdersReady


class SubmitRefused(Exception):
    """The submission can never run here (too many cores, unknown node or dependency); nothing was queued."""


class NodeTaken(Exception):
    """A second runner under the name of an online node; the node keeps the runner it has."""


class UnknownTask(Exception):
    """No active task has this ID (it may be final, then the store knows it)."""


@dataclass(frozen=True)
class NodeReport:
    """What a runner says about itself with every heartbeat."""

    name: str
    core_ids: tuple[int, ...]
    memory_bytes: int = 0
    #: its keeper holds launches for busy cores (core/ahead.py)
    queues_ahead: bool = False
    #: the runner's own ID ("" = not said)
    runner_id: str = ""
    #: its runner is stopping: nothing new goes to the node until a runner heartbeats again
    leaving: bool = False


@dataclass(frozen=True)
class Started:
    task_id: str
    started_at: float
    stdout_path: str = ""
    stderr_path: str = ""
    #: which attempt of the task this is about
    attempt: int = 1
    #: the Unix user it runs as on its node
    unix_user: str = ""


@dataclass(frozen=True)
class Finished:
    task_id: str
    finished_at: float
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    #: the runner ended it because the host ordered a kill
    killed: bool = False
    #: the node ended it because its time limit ran out
    timed_out: bool = False
    started_at: float | None = None
    stdout_path: str = ""
    stderr_path: str = ""
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None
    attempt: int = 1
    unix_user: str = ""
    #: queued ahead, it waited too long for its core and was handed back unrun
    returned: bool = False

    @property
    def state(self) -> TaskState:
        """The state this outcome ends the attempt in."""
        if self.killed:
            return TaskState.KILLED
        if self.timed_out:
            return TaskState.TIMEOUT
        if self.exit_code == 0 and self.signal is None and not self.error:
            return TaskState.COMPLETED
        return TaskState.FAILED


@dataclass
class Orders:
    launch: list[Task] = field(default_factory=list)
    #: run keys (model.run_key) of the attempts to end
    kill: list[str] = field(default_factory=list)
    #: to a node that queues ahead: seconds a launch may wait there for busy cores
    wait_limit: float | None = None

    def __bool__(self) -> bool:
        return bool(self.launch or self.kill)
