"""Turning a launch order into what the keeper starts, and ending a whole process tree.

The builders (`task_env`, `task_argv`, `choose_cwd`, `locate_command`, `Owners`) are pure or
only read the file system and the user database. The process itself is started by the node's
keeper (`keeper.py`), which stays its parent so that its exit status outlives a runner restart.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
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


def binds_like_numactl(path: str) -> bool:
    """Whether `path` is the numactl program itself, whose whole effect with `--physcpubind`
    alone is one sched_setaffinity call: the keeper then makes that call for the task and
    spares it numactl's exec (about 0.6 ms of CPU per task). It is, when the file is an ELF
    executable whose `--show` prints numactl's policy report. Anything else at that path (a
    site's wrapper script, say) is executed for every task as `<path> --physcpubind=<cores>`."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                return False
        shown = subprocess.run([path, "--show"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    lines = shown.stdout.splitlines()
    return shown.returncode == 0 and any(line.startswith("physcpubind:") for line in lines) \
        and "policy: default" in lines


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


@dataclass(frozen=True)
class Account:
    """A Unix user a task runs as: who the process is, and what its environment says it is."""

    name: str
    uid: int
    gid: int
    #: every group it is in, its primary group included (what a login would give it)
    groups: tuple[int, ...]
    home: str

    def env(self) -> dict[str, str]:
        """HOME, USER and LOGNAME of this user: a program finds its own dotfiles, not the runner's."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def account(name: str) -> Account | None:
    """The Unix user `name` on this node, or None if there is none."""
    try:
        pw = pwd.getpwnam(name)
    except (KeyError, ValueError):  # (ValueError: a name no account can have, e.g. with a NUL in it)
        return None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)), pw.pw_dir)


def own_name() -> str:
    """This process's login name (its uid's, not $USER, which sudo and su may leave behind)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (e.g. in a container): the number is all there is
        return str(uid)


class Owners:
    """Which Unix user runs a task on this node (SPEC §12): a root runner runs each task as the
    account named like its owner; a runner that is not root runs every task as itself.

    Accounts found are remembered a few seconds, like commands in `CommandCheck`: a sweep of
    thousands of tasks by one owner reads the user and group databases once every few seconds,
    not twice per task. Misses are never remembered: a user created just now is found at once.
    """

    def __init__(self, node: str, ttl: float = 5.0) -> None:
        self.node = node
        self.ttl = ttl
        self.root = os.geteuid() == 0
        self._ids = (os.geteuid(), os.getegid())
        #: the runner's own login name: the Unix user of every task of a runner that is not root
        self.me = own_name()
        self._found: dict[str, tuple[float, Account]] = {}

    def account(self, owner: str) -> tuple[Account | None, str]:
        """The account a task of `owner` runs as (None: the runner's own, also for a task from
        before owners existed, whose owner is ""), or why it cannot run here."""
        if not self.root or not owner:
            return None, ""
        now = time.monotonic()
        expiry, found = self._found.get(owner, (0.0, None))
        if found is None or expiry <= now:
            found = account(owner)
            if found is None:
                return None, (f'no Unix user "{owner}" on node {self.node}: tasks run as their owner\'s account; '
                              "create it there, or submit as a user that has one")
            self._found[owner] = (now + self.ttl, found)
        return found, ""

    def name(self, account: Account | None) -> str:
        return account.name if account is not None else self.me

    def switches(self, account: Account | None) -> bool:
        """Whether the task's process must change user (only then the keeper cannot use posix_spawn)."""
        return account is not None and (account.uid, account.gid) != self._ids

    def owner_of(self, path: str) -> str:
        """The Unix user owning `path` ("" if unknown): for a root runner, the user a task ran as
        is the owner of its output file, which the keeper gave to that user."""
        if not self.root:
            return self.me
        try:
            uid = os.stat(path).st_uid
        except OSError:
            return ""
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)


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
