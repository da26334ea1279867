"""The in-memory task and node records (domain shape: not SQL rows, not JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hakuriver.core.cores import CoreSet
from hakuriver.core.states import NodeState, TaskState


@dataclass
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


@dataclass
class Node:
    name: str
    cores: CoreSet
    memory_bytes: int = 0
    state: NodeState = NodeState.OFFLINE
    last_heartbeat: float = 0.0
    #: IDs of the tasks holding cores here (assigning or running)
    task_ids: set[str] = field(default_factory=set)

    @property
    def total_cores(self) -> int:
        return self.cores.total

    @property
    def free_cores(self) -> int:
        return self.cores.free_count
