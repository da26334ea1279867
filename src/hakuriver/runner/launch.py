"""Turning a launch order into a process, and ending a whole process tree.

The builders (`task_env`, `task_argv`, `choose_cwd`) are pure. `spawn` starts the command
under a tiny `sh` wrapper that stays its parent and writes the exit status to a file on
node-local disk: that file, not the runner, is what outlives a runner restart, so a restarted
runner can still report the real exit code of a task it did not start.
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

# $1 exit-status file, $2 working directory, then the command and its arguments, untouched.
# The wrapper first waits for one line on stdin: the runner's go-ahead, sent once the wrapper is
# pinned. EOF instead means the runner died while launching, and the task is not run. Then the
# task gets /dev/null as stdin. `cd` failing is reported like a shell does (126); the wrapper
# never re-parses the command.
WRAPPER = (
    'read -r _ || exit 125; exec 0</dev/null; f=$1; cd -- "$2" || exit 126; shift 2; '
    '"$@"; s=$?; echo "$s" > "$f"; exit "$s"'
)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class TaskPaths:
    stdout: str
    stderr: str
    temp_dir: str
    exit_file: str


def task_env(
    base: Mapping[str, str],
    user: Mapping[str, str],
    *,
    task_id: str,
    node: str,
    core_ids: Iterable[int],
    shared_dir: str,
    temp_dir: str,
) -> dict[str, str]:
    """The runner's environment, then the user's --env, then HakuRiver's own variables."""
    ids = list(core_ids)
    env = dict(base)
    env.update(user)
    env.update(
        HAKURIVER_TASK_ID=task_id,
        HAKURIVER_NODE=node,
        HAKURIVER_CORES=format_core_ids(ids),
        HAKURIVER_SHARED_DIR=shared_dir,
        HAKURIVER_LOCAL_TEMP_DIR=temp_dir,
    )
    for name in THREAD_VARS:
        if name not in user:
            env[name] = str(len(ids))
    return env


def task_argv(command: str, args: list[str], *, exit_file: str, cwd: str, cpus: Iterable[int], numactl: str) -> list[str]:
    argv = ["/bin/sh", "-c", WRAPPER, "hakuriver-task", exit_file, cwd, command, *args]
    if numactl:
        return [numactl, f"--physcpubind={format_core_ids(cpus)}", *argv]
    return argv


def physical_cpus(core_ids: Iterable[int], cpus: tuple[int, ...]) -> list[int]:
    """The CPUs to pin to: the core IDs themselves, or on an oversubscribed runner (`cpus` given) the CPUs they map to."""
    ids = list(core_ids)
    if not cpus:
        return ids
    return sorted({cpus[i % len(cpus)] for i in ids})


def choose_cwd(requested: str, temp_dir: str) -> str:
    """The client's directory if this node has it (shared storage), else the task's temp folder."""
    return requested if requested and os.path.isdir(requested) else temp_dir


def find_command(command: str, env: Mapping[str, str], cwd: str) -> str | None:
    """Why the command cannot be started, or None if it can."""
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd, command)
        if not os.path.exists(path):
            return f"command not found: {command}"
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return f"command is not executable: {command}"
        return None
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        return f"command not found: {command} (not in PATH of the task)"
    return None


class CommandCheck:
    """`find_command` with a short memory for commands found on PATH.

    A sweep runs the same program thousands of times; looking it up once every few seconds
    instead of once per task saves a stat per PATH entry per task. Misses are never remembered,
    so a just-installed program is found at once.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._found: dict[tuple[str, str], float] = {}

    def problem(self, command: str, env: Mapping[str, str], cwd: str) -> str | None:
        if "/" in command:
            return find_command(command, env, cwd)
        key = (command, env.get("PATH", ""))
        now = time.monotonic()
        if self._found.get(key, 0.0) > now:
            return None
        problem = find_command(command, env, cwd)
        if problem is None:
            self._found[key] = now + self.ttl
        return problem


def spawn(argv: list[str], env: Mapping[str, str], stdout_fd: int, stderr_fd: int, core_ids: Iterable[int] | None) -> int:
    """Start argv in a new session, stdout/stderr on the given fds, pinned to core_ids; its pid.

    The wrapper is pinned while it waits for its go-ahead on stdin, so no instruction of the
    task runs on other cores. Setting the mask of the waiting child is cheap, where setting the
    runner's own thread's mask around each spawn forced a migration of the runner every time.
    """
    gate_read, gate_write = os.pipe()
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, gate_read, 0),
            (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
            (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
        ]
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        if core_ids is not None:
            try:
                os.sched_setaffinity(pid, set(core_ids))
            except OSError:
                os.kill(pid, signal.SIGKILL)  # never run a task unpinned
                raise
        os.write(gate_write, b"go\n")
        return pid
    finally:
        os.close(gate_read)
        os.close(gate_write)


def find_task_leader(task_id: str) -> tuple[int, float] | None:
    """The pid and start time of a task's `sh` wrapper, found by the task ID in its environment."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) != proc.pid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            # the task's own processes carry the ID too: only the wrapper runs WRAPPER
            if proc.environ().get("HAKURIVER_TASK_ID") == task_id and proc.cmdline()[2:3] == [WRAPPER]:
                return proc.pid, proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    return None


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
