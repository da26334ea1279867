"""The private wire between a runner and its node's keeper: the messages and how they travel.

Apart from keeper.py (the keeper process) and keeper_link.py (the runner's side) because both
sides speak it, and because the keeper process loads this and not the runner's side. It is also
a compatibility promise: a keeper outlives an upgrade of its runner, so the two may be of
different releases. Fields and tags are never renamed or dropped; new fields are optional. Each
side builds the decoder for what it receives (ToKeeper, FromKeeper).

The runner talks to the keeper over a Unix socket in the runner's state folder (mode 0700: only
this user), one JSON message per line. The keeper's `task_id` is the attempt's run key (the task
ID, ".N" added for attempt N >= 2): each attempt is a run of its own there.

A Spawn that names its `cores` may be sent while those cores are still busy (work queued ahead:
docs/design-queued-ahead.md): the keeper holds it and starts it once they free, first come first
served per core (keeper_lines.py), tells the runner with a Began, and hands it back (an Exit with
`returned`) if it waited past its `wait_limit`. A keeper of an earlier release ignores `cores` and
starts every Spawn at once; its State says so (no `queues`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import msgspec

from hakuriver.runner.spawn import RunAs

SOCKET_NAME = "keeper.sock"
#: bytes per read from the other side: below malloc's mmap threshold (a 1 MiB buffer cost an mmap per read)
RECV_SIZE = 65536


class Hello(msgspec.Struct, tag="hello"):
    """First message of a runner: the environment every task starts from."""

    env: dict[str, str]


class Spawn(msgspec.Struct, tag="spawn", omit_defaults=True):
    task_id: str
    #: the program to execute, already looked up on the task's PATH
    path: str
    argv: list[str]
    #: on top of the runner's environment (Hello.env)
    env: dict[str, str]
    cwd: str
    stdout: str
    stderr: str
    #: the task's fresh scratch folder: created before it starts, removed once it has ended
    scratch: str
    #: CPUs to pin to before the program starts; None when numactl in argv does it
    cpus: list[int] | None = None
    #: seconds it may run before it is ended (SIGTERM to its tree, SIGKILL after `grace`); None = no limit
    time_limit: float | None = None
    grace: float = 0.0
    #: the user to run it as, when not the keeper's own (its output and scratch folder are given to it too)
    user: RunAs | None = None
    #: the task's logical core IDs: it starts once no started task and no earlier waiting spawn uses any of
    #: them, and a Began says when. None: started at once (a runner of an earlier release sends none)
    cores: list[int] | None = None
    #: seconds it may wait for its cores before the keeper hands it back (Exit.returned); None = no limit
    wait_limit: float | None = None


class Kill(msgspec.Struct, tag="kill"):
    task_id: str
    grace: float


class Forget(msgspec.Struct, tag="forget"):
    """The runner has journaled these exits: the keeper may drop them."""

    task_ids: list[str]


class Exit(msgspec.Struct, tag="exit", omit_defaults=True):
    task_id: str
    ended_at: float
    exit_code: int | None = None
    signal: int | None = None
    error: str = ""
    killed: bool = False
    #: the task never ran (it could not be started)
    not_started: bool = False
    #: ended by the keeper: its time limit ran out
    timed_out: bool = False
    #: its process tree's CPU time and peak memory (wait4's rusage), when it was reaped here
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_bytes: int | None = None
    #: withdrawn before it started, its wait_limit run out (with not_started): the runner hands it back
    returned: bool = False
    #: wall time at which its process was started, for a Spawn that named `cores` and did start
    started_at: float | None = None


class Began(msgspec.Struct, tag="began"):
    """A Spawn that named `cores` has been started: at once, or later once its cores freed."""

    task_id: str
    #: wall time (time.time())
    started_at: float


class State(msgspec.Struct, tag="state"):
    """The keeper's answer to Hello: what it runs (started), what waits, and the exits the runner has not forgotten."""

    running: list[str]
    exits: list[Exit]
    #: it ends tasks at their time limit (a keeper of an earlier release does not: the runner then does)
    limits: bool = False
    #: it runs a task as the user its Spawn names (one of an earlier release ignores `user`: it would run
    #: the task as itself, as root, so the runner does not give it such tasks)
    users: bool = False
    #: it honours Spawn.cores and wait_limit and sends Began (one of an earlier release starts every Spawn at once)
    queues: bool = False
    #: run keys of spawns accepted and still waiting for their cores (not in `running`)
    waiting: list[str] = msgspec.field(default_factory=list)


ToKeeper = Hello | Spawn | Kill | Forget
FromKeeper = State | Exit | Began
_encode = msgspec.json.Encoder().encode


def encode_lines(messages: Iterable[msgspec.Struct]) -> bytes:
    return b"".join(_encode(m) + b"\n" for m in messages)


def socket_address(state_dir: str) -> str:
    """The socket's path; through /proc/self/fd when the real one is too long for a Unix socket."""
    path = os.path.join(state_dir, SOCKET_NAME)
    if len(path.encode()) < 100:
        return path
    fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY)  # kept open: the short path goes through it
    return f"/proc/self/fd/{fd}/{SOCKET_NAME}"


def exit_of(task_id: str, status: int, usage: Any, now: float) -> Exit:
    """An Exit from wait4's status and rusage (ru_maxrss is in KiB on Linux)."""
    measured = {"cpu_user_seconds": usage.ru_utime, "cpu_system_seconds": usage.ru_stime,
                "max_rss_bytes": usage.ru_maxrss * 1024}
    if os.WIFEXITED(status):
        return Exit(task_id, now, exit_code=os.WEXITSTATUS(status), **measured)
    sig = os.WTERMSIG(status)
    return Exit(task_id, now, signal=sig, error=f"killed by signal {sig} (not by HakuRiver)", **measured)
