"""A real keeper holding spawns for busy cores (work queued ahead): started once their core frees,
killed or handed back while they wait, kept across a runner's reconnect, given again after a
hand-back; and a Spawn naming no cores (a runner of an earlier release) still starts at once.

Tasks that must stay busy wait for a gate file, so that what is checked is order, not timing."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import msgspec
import pytest

from hakuriver.runner.keeper_link import KeeperLink
from hakuriver.runner.keeper_wire import Began, Exit, Kill, Spawn, State
from support import keepers_below

SH = "/bin/sh"
TRUE = "/bin/true"


class Keeper:
    """A runner's side, reduced: a KeeperLink to send, and every message the keeper sent, in order."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = str(tmp_path / "state")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.link = KeeperLink(self.state_dir)
        self.state = self.link.connect(dict(os.environ))
        self.seen: list[msgspec.Struct] = []
        self.gates: list[Path] = []

    def reconnect(self) -> State:
        self.link.close()
        self.link = KeeperLink(self.state_dir)
        self.state = self.link.connect(dict(os.environ))
        return self.state

    def spawn(self, task_id: str, argv: list[str], cores: list[int] | None, **kw: object) -> Spawn:
        msg = Spawn(task_id, argv[0], argv, {}, str(self.tmp_path), self.out(task_id), str(self.tmp_path / f"{task_id}.err"),
                    str(self.tmp_path / f"{task_id}.scratch"), cores=cores, **kw)
        self.link.send([msg])
        return msg

    def out(self, task_id: str) -> str:
        return str(self.tmp_path / f"{task_id}.out")

    def gated(self, task_id: str, cores: list[int] | None, **kw: object) -> Path:
        """A task that runs until its gate file appears (the file returned)."""
        gate = self.tmp_path / f"{task_id}.gate"
        self.gates.append(gate)
        self.spawn(task_id, [SH, "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"], cores, **kw)
        return gate

    def until(self, pred, what: str, timeout: float = 10.0) -> None:  # noqa: ANN001
        """Read the keeper's messages until pred(self) holds."""
        deadline = time.monotonic() + timeout
        while not pred(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.seen}")
            if select.select([self.link._sock], [], [], left)[0]:
                self.seen += self.link._read()

    def index(self, kind: type, task_id: str) -> int | None:
        return next((i for i, m in enumerate(self.seen) if isinstance(m, kind) and m.task_id == task_id), None)

    def has(self, kind: type, task_id: str) -> bool:
        return self.index(kind, task_id) is not None

    def exit(self, task_id: str) -> Exit:
        self.until(lambda k: k.has(Exit, task_id), f"the exit of {task_id}")
        return self.seen[self.index(Exit, task_id)]

    def began(self, task_id: str) -> Began:
        self.until(lambda k: k.has(Began, task_id), f"the start of {task_id}")
        return self.seen[self.index(Began, task_id)]


@pytest.fixture
def keeper(tmp_path):  # noqa: ANN001, ANN201
    k = Keeper(tmp_path)
    yield k
    for gate in k.gates:  # no task outlives the test, not even one whose keeper was killed
        gate.touch()
    k.link.close()
    for proc in keepers_below(k.state_dir):
        proc.kill()


def test_a_spawn_for_a_busy_core_starts_once_it_frees_and_another_core_is_not_held_up(keeper):
    assert keeper.state.queues and keeper.state.waiting == []
    gate = keeper.gated("a", [0])
    keeper.began("a")
    keeper.spawn("b", [TRUE], [0])
    keeper.spawn("c", [TRUE], [1])
    keeper.exit("c")  # core 1 was free: it ran while "a" holds core 0
    assert keeper.has(Began, "c") and not keeper.has(Began, "b") and not keeper.has(Exit, "a")
    assert not os.path.exists(keeper.out("b"))  # its files are made when it starts
    gate.touch()
    b_exit = keeper.exit("b")
    assert keeper.index(Exit, "a") < keeper.index(Began, "b") < keeper.index(Exit, "b")
    assert b_exit.exit_code == 0 and b_exit.started_at == keeper.began("b").started_at
    assert keeper.exit("a").started_at == keeper.began("a").started_at


def test_a_kill_of_a_waiting_spawn_ends_it_never_started(keeper):
    gate = keeper.gated("a", [0])
    keeper.began("a")
    keeper.spawn("b", [TRUE], [0])
    keeper.link.send([Kill("b", 0.5)])
    ex = keeper.exit("b")
    assert ex.killed and ex.not_started and ex.error == "killed by user" and not ex.returned
    gate.touch()
    keeper.exit("a")
    keeper.spawn("after", [TRUE], [0])  # core 0 is free again, and nothing of "b" holds it
    keeper.exit("after")
    assert not keeper.has(Began, "b")
    assert not os.path.exists(keeper.out("b")) and not os.path.exists(keeper.tmp_path / "b.scratch")


def test_a_spawn_that_waits_past_its_wait_limit_is_handed_back(keeper):
    gate = keeper.gated("a", [0])
    keeper.began("a")
    keeper.spawn("b", [TRUE], [0], wait_limit=0.3)
    ex = keeper.exit("b")
    assert ex.returned and ex.not_started and "handed back: waited 0.3s behind a busy core" in ex.error
    assert not keeper.has(Exit, "a")  # handed back while "a" still ran
    gate.touch()
    keeper.exit("a")
    keeper.spawn("after", [TRUE], [0])
    keeper.exit("after")
    assert not keeper.has(Began, "b") and not os.path.exists(keeper.out("b"))


def test_a_runner_that_reconnects_finds_the_waiting_spawn_and_gets_its_start_and_exit(keeper):
    gate = keeper.gated("a", [0])
    keeper.began("a")
    keeper.spawn("b", [TRUE], [0])
    keeper.spawn("c", [TRUE], [0])
    state = keeper.reconnect()
    assert state.queues and state.running == ["a"] and state.waiting == ["b", "c"]
    keeper.seen = []
    gate.touch()
    keeper.exit("c")
    assert [type(m).__name__ + " " + m.task_id for m in keeper.seen] == [
        "Exit a", "Began b", "Exit b", "Began c", "Exit c"]


def test_a_spawn_handed_back_and_sent_again_under_the_same_run_key_never_runs(keeper):
    """The host queues a handed-back task again as a new attempt (a new run key): the same key
    again is a stale order, and a stale order never starts anything."""
    gate = keeper.gated("a", [0])
    keeper.began("a")
    keeper.spawn("b", [TRUE], [0], wait_limit=0.2)
    assert keeper.exit("b").returned
    keeper.spawn("b", [TRUE], [0])
    gate.touch()
    keeper.exit("a")
    keeper.spawn("after", [TRUE], [0])
    keeper.exit("after")
    assert not os.path.exists(keeper.out("b"))
    assert [type(m).__name__ for m in keeper.seen if m.task_id == "b"] == ["Exit"]  # its hand-back, nothing more


def test_a_spawn_naming_no_cores_starts_at_once_as_from_an_earlier_runner(keeper):
    gate = keeper.gated("a", [0])
    keeper.began("a")
    keeper.spawn("old", [TRUE], None)
    ex = keeper.exit("old")  # while "a" still holds core 0
    assert ex.exit_code == 0 and ex.started_at is None and not keeper.has(Began, "old")
    assert not keeper.has(Exit, "a")
    gate.touch()
    keeper.exit("a")


def _until_mask(pid: int, cpus: set[int]) -> None:
    deadline = time.monotonic() + 10
    while os.sched_getaffinity(pid) != cpus and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.sched_getaffinity(pid) == cpus


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs to pin to one")
def test_the_keeper_leaves_the_cpu_of_its_last_start_when_no_start_follows_soon(keeper):
    """It may stay on a task's CPU while spawns wait (the next start is often there), but not
    for long, nor once none waits: a keeper pinned to a busy core would answer its runner late."""
    everything = os.sched_getaffinity(0)
    cpu = min(everything)
    (proc,) = keepers_below(keeper.state_dir)
    gate = keeper.tmp_path / "a.gate"
    keeper.gates.append(gate)
    a, b = (Spawn(t, argv[0], argv, {}, str(keeper.tmp_path), keeper.out(t), str(keeper.tmp_path / f"{t}.err"),
                  str(keeper.tmp_path / f"{t}.scratch"), cpus=[cpu], cores=[0])
            for t, argv in (("a", [SH, "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"]), ("b", [TRUE])))
    keeper.link.send([a, b])  # "a" starts on `cpu`; "b" waits behind it, for as long as "a" runs
    keeper.began("a")
    _until_mask(proc.pid, everything)  # while "b" still waits
    assert not keeper.has(Began, "b")
    gate.touch()
    keeper.exit("b")
    _until_mask(proc.pid, everything)  # and after its own start, once nothing waits
