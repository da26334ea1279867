"""How the keeper starts a task's process: the fast way as its own user, another way as another user.

`os.posix_spawn` is the fast path (one vfork-like clone, no Python in the child), but it cannot
change the user. A root runner runs each task as its owner's Unix user, and for those tasks the
keeper uses `subprocess.Popen` with `user`, `group` and `extra_groups`: its fork and exec happen
in C (`_posixsubprocess`), so no Python code runs in the child of this multi-threaded process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from hakuriver.runner.keeper_wire import Spawn

# O_NOFOLLOW: a root keeper must not truncate and hand over whatever a planted symlink points to
OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW


_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
#: GNU env, which enters the task's folder as the task's user (-C) and executes it
ENV = "/usr/bin/env"
#: what runs an executable file that has no "#!" line
SHELL = "/bin/sh"
#: of the runner's own environment, what a task of another user gets (the rest is root's:
#: credentials, sockets, sudo's traces); the task's own variables come on top
_PASSED = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM"})
#: never handed to a task, whoever runs it
_WITHHELD = frozenset({"HAKURIVER_TOKEN"})


def base_env(runner_env: dict[str, str], other_user: bool) -> dict[str, str]:
    """What a task gets of the runner's environment, before its own variables: all of it (but a
    token) when it runs as the runner's user; for another user, only PATH, locale, time zone and
    terminal type (_PASSED, LC_*)."""
    if not other_user:
        return {k: v for k, v in runner_env.items() if k not in _WITHHELD}
    return {k: v for k, v in runner_env.items() if k in _PASSED or k.startswith("LC_")}


class RunAs(msgspec.Struct):
    """The user a task runs as, when it is not the keeper's own (only a root keeper can switch)."""

    uid: int
    gid: int
    #: supplementary groups, the primary one included (os.getgrouplist)
    groups: list[int]


def open_outputs(stdout: str, stderr: str, user: RunAs | None) -> tuple[int, int]:
    """The task's stdout and stderr files, open for writing and owned by the user it runs as."""
    out_fd = os.open(stdout, OUTPUT_FLAGS, 0o644)
    try:
        err_fd = os.open(stderr, OUTPUT_FLAGS, 0o644)
    except OSError:
        os.close(out_fd)
        raise
    if user is not None:  # theirs alone: only the owner (or an admin, through the host) reads a task's output
        try:
            for fd in (out_fd, err_fd):
                os.fchown(fd, user.uid, user.gid)
                os.fchmod(fd, 0o600)
        except OSError:
            os.close(out_fd)
            os.close(err_fd)
            raise
    return out_fd, err_fd


def hand_over(folder: str, user: RunAs | None) -> None:
    """Give the task's scratch folder to the user it runs as (it was made by the keeper)."""
    if user is not None:
        os.chown(folder, user.uid, user.gid, follow_symlinks=False)


class Starter:
    """Starts tasks, pinned to their CPUs, each in a session of its own."""

    def __init__(self) -> None:
        self._cwd = ""
        self._cpus = os.sched_getaffinity(0)
        #: when the last start pinned the keeper's thread to fewer CPUs than its own (monotonic); None if not pinned
        self._pinned_at: float | None = None
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        #: children started through Popen, by pid, until the keeper reaps them (see `reaped`)
        self._popens: dict[int, subprocess.Popen] = {}

    def start(self, msg: Spawn, env: dict[str, str], out_fd: int, err_fd: int) -> int:
        """The new process's pid. Neither way has a "set CPU mask" step, but a child inherits
        the mask of the thread that starts it: the keeper pins its own thread to the task's CPUs
        first, so the task is pinned before its first instruction.

        The keeper stays there until a start needs other CPUs, or until `unpin`, rather than
        going back at once: tasks queued ahead start one after another, often on the CPU of the
        one before. Measured on a 2-CPU machine (1,000-task batches, 4 nodes): 0.7 mask changes
        per start instead of 2, a fifth fewer migrations of the keeper, and batches about 1.5%
        faster (benchmarks/ab_bulk.py). The mask is read, not remembered: the kernel resets it
        when a cpuset changes or a CPU goes offline."""
        want = self._cpus if msg.cpus is None else set(msg.cpus)
        if os.sched_getaffinity(0) != want:
            os.sched_setaffinity(0, want)
        self._pinned_at = None if want == self._cpus else time.monotonic()
        if msg.user is None:
            return self._posix_spawn(msg, env, out_fd, err_fd)
        return self._popen(msg, msg.user, env, out_fd, err_fd)

    def pinned_for(self, now: float) -> float | None:
        """Seconds since the start that pinned the keeper to fewer CPUs than its own; None if it is not."""
        return None if self._pinned_at is None else now - self._pinned_at

    def unpin(self) -> None:
        """Back to all the keeper's CPUs (a no-op if it is there): the CPU of its last start is
        usually busy with that task, which must not slow the keeper's answers to its runner, nor
        the threads it starts (they inherit its mask)."""
        if self._pinned_at is None:
            return
        self._pinned_at = None
        with contextlib.suppress(OSError):  # its CPUs changed under it (a cpuset): the next start sets the mask anyway
            os.sched_setaffinity(0, self._cpus)

    def _posix_spawn(self, msg: Spawn, env: dict[str, str], out_fd: int, err_fd: int) -> int:
        """posix_spawn has no "change directory" action in Python either: the keeper changes its
        own, which the child inherits (and leaves it there: the next task likely wants the same)."""
        if msg.cwd != self._cwd:
            os.chdir(msg.cwd)
            self._cwd = msg.cwd
        actions = [(os.POSIX_SPAWN_DUP2, self._devnull, 0), (os.POSIX_SPAWN_DUP2, out_fd, 1),
                   (os.POSIX_SPAWN_DUP2, err_fd, 2)]
        # its own session: a task's whole tree can be signalled, and a terminal's Ctrl-C spares it.
        # SIGPIPE and SIGXFSZ back to their defaults, which Python ignores and a child would inherit
        # (`yes | head` must end), as Popen's restore_signals does on the other path
        try:
            return os.posix_spawn(msg.path, msg.argv, env, file_actions=actions, setsid=True,
                                  setsigdef=_DEFAULT_SIGNALS)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
        # an executable file the kernel cannot run (a script without "#!"): run it with /bin/sh,
        # as execvp does, and so as numactl, env and a shell would
        return os.posix_spawn(SHELL, [SHELL, msg.path, *msg.argv[1:]], env, file_actions=actions, setsid=True,
                              setsigdef=_DEFAULT_SIGNALS)

    def _popen(self, msg: Spawn, user: RunAs, env: dict[str, str], out_fd: int, err_fd: int) -> int:
        # The working folder is entered by `env -C` once the process is the owner: subprocess's
        # child changes directory *before* it drops root, which would let a task work in a folder
        # its owner may not enter (alice's task in bob's 0755 folder inside his 0700 home)
        argv = [ENV, "-C", msg.cwd, "--", msg.path, *msg.argv[1:]]
        try:
            popen = subprocess.Popen(argv, stdin=self._devnull, stdout=out_fd, stderr=err_fd, cwd="/",
                                     env=env, user=user.uid, group=user.gid, extra_groups=user.groups,
                                     start_new_session=True, close_fds=True)
        except subprocess.SubprocessError as exc:  # a failure in the child that is not an OSError
            raise OSError(str(exc)) from exc
        # kept until reaped: a Popen dropped while its returncode is None would go on subprocess's
        # list of children to poll, and a later Popen would waitpid it, taking its exit status away
        self._popens[popen.pid] = popen
        return popen.pid

    def reaped(self, pid: int, status: int) -> None:
        """The keeper reaped `pid` (wait4): a Popen of it learns its status and may go."""
        popen = self._popens.pop(pid, None)
        if popen is not None:
            popen.returncode = os.waitstatus_to_exitcode(status)
