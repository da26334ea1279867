"""The keeper's lines of spawns waiting for busy cores: examples, then random sequences checked
against a brute-force model and the rules (one started task per core, first come first served
per core, nothing waits without a reason, what left a line never starts)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hakuriver.runner.keeper_lines import CoreLines
from hakuriver.runner.keeper_wire import Spawn


def spawn(task_id: str, cores: list[int] | None, wait_limit: float | None = None) -> Spawn:
    return Spawn(task_id, "/bin/true", ["true"], {}, "/", "/dev/null", "/dev/null", f"/tmp/{task_id}",
                 cores=cores, wait_limit=wait_limit)


def keys(spawns: list[Spawn]) -> list[str]:
    return [s.task_id for s in spawns]


def test_a_spawn_naming_no_cores_starts_at_once_and_is_not_tracked():
    lines = CoreLines()
    assert lines.add(spawn("a", [0]), 0.0)
    assert lines.add(spawn("old", None), 0.0)
    assert lines.in_use() == {0: "a"}
    assert lines.released("old") == []


def test_each_core_serves_its_spawns_in_arrival_order():
    lines = CoreLines()
    assert lines.add(spawn("a", [0]), 0.0)
    assert not lines.add(spawn("b", [0]), 0.0)
    assert not lines.add(spawn("c", [0]), 0.0)
    assert lines.add(spawn("d", [1]), 0.0)  # another core: at once
    assert lines.waiting == ["b", "c"] and len(lines) == 2 and "b" in lines
    assert keys(lines.released("a")) == ["b"]
    assert keys(lines.released("b")) == ["c"]
    assert keys(lines.released("c")) == [] and len(lines) == 0


def test_a_spawn_waits_behind_an_earlier_one_sharing_a_core_even_if_its_own_cores_are_free():
    lines = CoreLines()
    assert lines.add(spawn("a", [0]), 0.0)
    assert not lines.add(spawn("wide", [0, 1]), 0.0)
    assert not lines.add(spawn("narrow", [1]), 0.0)  # core 1 is free, but "wide" came first
    assert lines.drop("wide") is not None
    assert keys(lines.ready()) == ["narrow"]  # what held it back left the line
    assert lines.drop("wide") is None


def test_wait_limits_withdraw_in_time_and_only_spawns_still_waiting():
    lines = CoreLines()
    lines.add(spawn("a", [0]), 0.0)
    lines.add(spawn("b", [0], wait_limit=2.0), 0.0)
    lines.add(spawn("c", [0], wait_limit=1.0), 0.5)
    lines.add(spawn("d", [0]), 0.5)
    assert lines.next_deadline() == 1.5
    assert lines.withdraw_due(1.4) == []
    assert keys(lines.withdraw_due(1.5)) == ["c"]
    assert keys(lines.released("a")) == ["b"]  # started: its deadline no longer counts
    assert lines.next_deadline() is None
    assert lines.withdraw_due(10.0) == []
    assert keys(lines.released("b")) == ["d"]


def test_a_core_named_twice_is_one_core():
    lines = CoreLines()
    assert lines.add(spawn("a", [2, 2]), 0.0)
    assert not lines.add(spawn("b", [2, 2]), 0.0)
    assert keys(lines.released("a")) == ["b"]
    assert lines.in_use() == {2: "b"}


# ---- random sequences ------------------------------------------------------------------------
CORES = 4
core_sets = st.lists(st.integers(0, CORES - 1), min_size=1, max_size=3)
wait_limits = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 3.0]))


class Lines(RuleBasedStateMachine):
    """Random adds (some of a key handed back before, as the keeper re-accepts one), releases,
    kills of waiting spawns and passing time, against a brute-force model of the rules."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = CoreLines()
        self.now, self.count = 0.0, 0
        #: the model: started tasks and their cores; waiting (key, cores, withdraw-by) in arrival order
        self.running: dict[str, set[int]] = {}
        self.waiting: list[tuple[str, set[int], float | None]] = []
        self.arrival: dict[str, int] = {}
        self.cores_of: dict[str, set[int]] = {}
        #: every start, as (arrival number, cores), in order
        self.starts: list[tuple[int, set[int]]] = []
        #: withdrawn or dropped, not added again since
        self.gone: set[str] = set()

    def used(self) -> set[int]:
        return set().union(*self.running.values())

    def startable(self) -> list[str]:
        used, blocked, start = self.used(), set(), []
        for key, cores, _ in self.waiting:
            if cores & used or cores & blocked:
                blocked |= cores
            else:
                used |= cores
                start.append(key)
        return start

    def started(self, got: list[Spawn]) -> None:
        got_keys = keys(got)
        assert got_keys == sorted(got_keys, key=self.arrival.__getitem__)  # in arrival order
        assert got_keys == self.startable()  # exactly what the rules let start
        assert not set(got_keys) & self.gone
        for key in got_keys:
            self.waiting = [w for w in self.waiting if w[0] != key]
            self.running[key] = self.cores_of[key]
            self.starts.append((self.arrival[key], self.cores_of[key]))

    def _add(self, key: str, cores: list[int] | None, limit: float | None) -> None:
        self.count += 1
        self.arrival[key] = self.count
        self.gone.discard(key)
        now_starts = self.lines.add(spawn(key, cores, limit), self.now)
        if cores is None:
            assert now_starts
            return
        self.cores_of[key] = wanted = set(cores)
        assert now_starts == (not wanted & self.used() and not any(wanted & c for _, c, _ in self.waiting))
        if now_starts:
            self.running[key] = wanted
            self.starts.append((self.count, wanted))
        else:
            self.waiting.append((key, wanted, None if limit is None else self.now + limit))

    @rule(cores=st.one_of(st.none(), core_sets, core_sets, core_sets), limit=wait_limits)
    def add(self, cores: list[int] | None, limit: float | None) -> None:
        self._add(f"t{self.count + 1}", cores, limit)

    @rule(cores=core_sets, limit=wait_limits)
    def add_busy(self, cores: list[int], limit: float | None) -> None:
        self._add(f"t{self.count + 1}", cores, limit)

    @precondition(lambda self: self.gone)
    @rule(i=st.integers(0, 20), cores=core_sets, limit=wait_limits)
    def add_again(self, i: int, cores: list[int], limit: float | None) -> None:
        self._add(sorted(self.gone)[i % len(self.gone)], cores, limit)

    @precondition(lambda self: self.running)
    @rule(i=st.integers(0, 20))
    def release(self, i: int) -> None:
        key = sorted(self.running)[i % len(self.running)]
        del self.running[key]
        self.started(self.lines.released(key))

    @rule(i=st.integers(0, 20))
    def drop(self, i: int) -> None:
        if not self.waiting:
            assert self.lines.drop("nobody") is None
            return
        key = self.waiting[i % len(self.waiting)][0]
        assert self.lines.drop(key).task_id == key
        self.waiting = [w for w in self.waiting if w[0] != key]
        self.gone.add(key)
        self.started(self.lines.ready())

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        due = keys(self.lines.withdraw_due(self.now))
        assert sorted(due) == sorted(k for k, _, d in self.waiting if d is not None and d <= self.now)
        self.waiting = [w for w in self.waiting if w[0] not in due]
        self.gone.update(due)
        self.started(self.lines.ready())

    @invariant()
    def follows_the_rules(self) -> None:
        assert self.lines.waiting == [k for k, _, _ in self.waiting]
        in_use = self.lines.in_use()
        for key, cores in self.running.items():  # no core used by two started tasks
            assert all(in_use.get(c) == key for c in cores)
        assert sum(len(c) for c in self.running.values()) == len(in_use)
        for i, (key, cores, _) in enumerate(self.waiting):  # nothing waits without a reason
            earlier = set().union(*(c for _, c, _ in self.waiting[:i]))
            assert cores & self.used() or cores & earlier, f"{key} waits for nothing"
        deadlines = [d for _, _, d in self.waiting if d is not None]
        assert self.lines.next_deadline() == (min(deadlines) if deadlines else None)

    def teardown(self) -> None:
        for core in range(CORES):  # per core, starts came in arrival order
            on_core = [n for n, cores in self.starts if core in cores]
            assert on_core == sorted(on_core)


Lines.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_random_sequences_follow_the_rules = Lines.TestCase
