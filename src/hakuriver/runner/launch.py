"""Turning a launch order into what the keeper starts, and ending a whole process tree.

The builders (`task_env`, `task_argv`, `choose_cwd`, `locate_command`) are pure or only read
the file system. The process itself is started by the node's keeper (`keeper.py`), which stays
its parent so that its exit status outlives a runner restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from hakuriver.core.cores import format_core_ids

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class TaskPaths:
    stdout: str
    stderr: str
    temp_dir: str


def task_env(
    base: Mapping[str, str],
    user: Mapping[str, str],
    *,
    task_id: str,
    node: str,
    core_ids: Iterable[int],
    shared_dir: str,
    temp_dir: str,
    attempt: int = 1,
) -> dict[str, str]:
    """The runner's environment, then the user's --env, then HakuRiver's own variables."""
    ids = list(core_ids)
    env = dict(base)
    env.update(user)
    env.update(
        HAKURIVER_TASK_ID=task_id,
        HAKURIVER_ATTEMPT=str(attempt),
        HAKURIVER_NODE=node,
        HAKURIVER_CORES=format_core_ids(ids),
        HAKURIVER_SHARED_DIR=shared_dir,
        HAKURIVER_LOCAL_TEMP_DIR=temp_dir,
    )
    for name in THREAD_VARS:
        if name not in user:
            env[name] = str(len(ids))
    return env


def task_argv(program: str, command: str, args: list[str], *, cpus: Iterable[int], numactl: str) -> tuple[str, list[str]]:
    """The file to execute and its argv: the program itself (argv[0] as the user wrote it), or
    numactl binding the cores and then executing the program."""
    if numactl:
        return numactl, [numactl, f"--physcpubind={format_core_ids(cpus)}", program, *args]
    return program, [command, *args]


def physical_cpus(core_ids: Iterable[int], cpus: tuple[int, ...]) -> list[int]:
    """The CPUs to pin to: the core IDs themselves, or on an oversubscribed runner (`cpus` given) the CPUs they map to."""
    ids = list(core_ids)
    if not cpus:
        return ids
    return sorted({cpus[i % len(cpus)] for i in ids})


def choose_cwd(requested: str, temp_dir: str) -> str:
    """The client's directory if this node has it (shared storage), else the task's temp folder."""
    return requested if requested and os.path.isdir(requested) else temp_dir


def locate_command(command: str, env: Mapping[str, str], cwd: str) -> tuple[str, str | None]:
    """The program to execute for `command` (looked up on the task's PATH), or why there is none."""
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd, command)
        if not os.path.exists(path):
            return "", f"command not found: {command}"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return "", f"command is not executable: {command}"
        return path, None
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        return "", f"command not found: {command} (not in PATH of the task)"
    return found, None


class CommandCheck:
    """`locate_command` with a short memory for commands found.

    A sweep runs the same program thousands of times; looking it up once every few seconds
    instead of once per task saves a few stats per task. Misses are never remembered, so a
    just-installed program is found at once.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._found: dict[tuple[str, str], tuple[float, str]] = {}

    def locate(self, command: str, env: Mapping[str, str], cwd: str) -> tuple[str, str | None]:
        key = (command, cwd if "/" in command and not os.path.isabs(command) else env.get("PATH", ""))
        now = time.monotonic()
        expiry, path = self._found.get(key, (0.0, ""))
        if expiry > now:
            return path, None
        path, problem = locate_command(command, env, cwd)
        if problem is None:
            self._found[key] = (now + self.ttl, path)
        return path, problem


def find_task_leader(task_id: str, attempt: int = 1) -> tuple[int, float] | None:
    """The pid and start time of an attempt's first process, found by the task ID and attempt in its environment.

    Only needed for a task whose keeper is gone (killed, or the node's state folder lost): the
    task still runs, but nobody can collect its exit status any more.
    """
    found: list[tuple[float, int]] = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) != proc.pid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            if env.get("HAKURIVER_TASK_ID") == task_id and env.get("HAKURIVER_ATTEMPT", "1") == str(attempt):
                found.append((proc.create_time(), proc.pid))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    if not found:
        return None
    start_time, pid = min(found)  # the task's own children may have made sessions of their own
    return pid, start_time


def is_alive(pid: int, start_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (start_time is None or abs(proc.create_time() - start_time) < 0.01)
    except psutil.NoSuchProcess:
        return False


def kill_tree(pgid: int, grace: float, poll: float = 0.05) -> None:
    """SIGTERM to the task's process group and every descendant; SIGKILL whatever is left after `grace`."""
    members = _tree(pgid)
    _signal_all(pgid, members, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _any_alive(pgid, members):
            return
        time.sleep(poll)
    members |= _tree(pgid)
    _signal_all(pgid, members, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _any_alive(pgid, members):
        time.sleep(poll)


def _tree(pgid: int) -> set[psutil.Process]:
    """The session leader's descendants, including those that left its process group."""
    try:
        leader = psutil.Process(pgid)
        return {leader, *leader.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _signal_all(pgid: int, members: set[psutil.Process], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in members:
        try:
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _any_alive(pgid: int, members: set[psutil.Process]) -> bool:
    for proc in members:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return False
