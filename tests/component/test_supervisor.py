"""The runner's supervisor with a real keeper and real children: exit codes, signals, kill, take-over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hakuriver import protocol as p
from hakuriver.runner import launch
from hakuriver.runner.journal import Journal
from hakuriver.runner.keeper import State
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import NodeSetup, Supervisor
from support import keepers_below, wait_until


class Pump:
    """What the runner's results loop does, without the host: journal the keeper's exits."""

    def __init__(self, sup: Supervisor) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sup,), daemon=True)
        self._thread.start()

    def _run(self, sup: Supervisor) -> None:
        while not self._stop.is_set():
            sup.pump(0.05)

    def stop(self) -> None:
        """Stopped for good: no keeper is restarted after this, even if the test kills it."""
        self._stop.set()
        self._thread.join(5)


def serve(setup: NodeSetup, started: list[p.TaskStarted] | None = None) -> tuple[Supervisor, Outbox, Pump, list]:
    outbox = Outbox(Journal(os.path.join(setup.state_dir, "journal")))
    events: list[p.TaskStarted] = [] if started is None else started
    sup = Supervisor(setup, outbox, events.append)
    taken_over = sup.start()
    return sup, outbox, Pump(sup), taken_over


@pytest.fixture
def node(tmp_path):  # noqa: ANN001, ANN201
    (tmp_path / "shared").mkdir()
    (tmp_path / "tmp").mkdir()
    setup = NodeSetup("n", str(tmp_path / "shared"), str(tmp_path / "tmp"), "", 0.5, str(tmp_path / "state"), ())
    os.makedirs(setup.state_dir, mode=0o700)
    started: list[p.TaskStarted] = []
    sup, outbox, pump, _ = serve(setup, started)
    yield setup, sup, outbox, started
    pump.stop()
    sup.keeper.close()
    for proc in keepers_below(str(tmp_path)):
        proc.kill()


def order(task_id: str, *argv: str) -> p.LaunchOrder:
    return p.LaunchOrder(task_id, argv[0], list(argv[1:]), {}, [0])


def result(outbox: Outbox, task_id: str) -> p.TaskFinished:
    return wait_until(lambda: next((r for r in outbox.pending(100) if r.task_id == task_id), None), 10, task_id)


def test_exit_codes_reach_the_outbox(node):
    _, sup, outbox, started = node
    sup.launch([order("ok", "true")])
    sup.launch([order("three", "sh", "-c", "exit 3")])
    assert result(outbox, "ok").exit_code == 0
    assert result(outbox, "three").exit_code == 3
    assert {s.task_id for s in started} == {"ok", "three"}
    assert sup.held() == set()


def test_signal_death_is_reported(node):
    _, sup, outbox, _ = node
    sup.launch([order("sig", "sh", "-c", "kill -9 $$")])
    r = result(outbox, "sig")
    assert r.signal == 9 and "killed by signal 9" in r.error


def test_repeated_launch_order_runs_once(node):
    setup, sup, outbox, started = node
    counter = os.path.join(setup.shared_dir, "count")
    o = order("once", "sh", "-c", f"echo x >> {counter}")
    sup.launch([o])
    result(outbox, "once")
    sup.launch([o])  # e.g. an order repeated after a lost answer: the result is still in the outbox
    time.sleep(0.2)
    assert open(counter).read() == "x\n" and len(started) == 1


def test_missing_shared_output_fails_with_a_reason(node, tmp_path):
    setup, sup, outbox, _ = node
    os.rename(setup.shared_dir, str(tmp_path / "moved"))
    open(setup.shared_dir, "w").close()  # a file where the folder was: nothing can be written below it
    sup.launch([order("noout", "true")])
    r = result(outbox, "noout")
    assert r.exit_code is None and "cannot write the task's output" in r.error


def test_kill_reports_killed_after_the_tree_is_gone(node):
    _, sup, outbox, _ = node
    sup.launch([order("k", "sh", "-c", 'trap "" TERM; sleep 30')])
    wait_until(lambda: "k" in sup.held(), 5, "launch")
    sup.kill("k")
    r = result(outbox, "k")
    assert r.killed and r.error == "killed by user"


def test_exit_codes_above_128_are_exit_codes_and_signals_are_signals(node):
    _, sup, outbox, _ = node
    sup.launch([order("high", "sh", "-c", "exit 200"), order("term", "sh", "-c", "kill -TERM $$")])
    high, term = result(outbox, "high"), result(outbox, "term")
    assert (high.exit_code, high.signal, high.error) == (200, None, "")
    assert (term.exit_code, term.signal) == (None, signal.SIGTERM)


def test_tasks_start_pinned_and_in_their_own_session(node):
    setup, sup, outbox, _ = node
    sup.launch([order("pin", "sh", "-c", "grep Cpus_allowed_list /proc/self/status; ps -o sid= -p $$; echo $$")])
    assert result(outbox, "pin").exit_code == 0
    cpus, sid, pid = Path(setup.shared_dir, "task_outputs", "pin.out").read_text().split("\n")[:3]
    assert cpus.split() == ["Cpus_allowed_list:", "0"]
    assert sid.strip() == pid.strip()


LAUNCH_AND_DIE = """
import os, sys
from hakuriver import protocol as p
from hakuriver.runner.journal import Journal
from hakuriver.runner.keeper import State
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import NodeSetup, Supervisor
setup = NodeSetup("n", sys.argv[1], sys.argv[2], "", 0.5, sys.argv[3], ())
os.makedirs(setup.state_dir, exist_ok=True)
sup = Supervisor(setup, Outbox(Journal(os.path.join(setup.state_dir, "journal"))), lambda e: None)
sup.start()
sup.launch([p.LaunchOrder(sys.argv[4], "sh", ["-c", sys.argv[5]], {}, [0])])
os._exit(0)  # like a runner killed with SIGKILL: nothing journaled after this, nothing cleaned up
"""


def gated_task_in_a_dead_runner(setup: NodeSetup, task_id: str, code: int) -> tuple[NodeSetup, str]:
    gate = f"{setup.shared_dir}/go-{task_id}"
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; exit {code}"
    state = setup.state_dir + "-" + task_id
    subprocess.run([sys.executable, "-c", LAUNCH_AND_DIE, setup.shared_dir, setup.local_temp_dir, state, task_id, script],
                   check=True)
    return NodeSetup("n", setup.shared_dir, setup.local_temp_dir, "", 0.5, state, ()), gate


def test_a_new_supervisor_takes_over_the_tasks_of_a_dead_runner(node):
    fresh_setup, gate = gated_task_in_a_dead_runner(node[0], "adopt", 6)
    fresh, outbox, pump, taken_over = serve(fresh_setup)
    assert [s.task_id for s in taken_over] == ["adopt"]
    assert fresh.held() == {"adopt"}
    open(gate, "w").close()
    r = result(outbox, "adopt")
    pump.stop()
    assert r.exit_code == 6 and r.error == ""
    assert fresh.held() == set()


def test_a_task_whose_keeper_was_killed_is_watched_until_it_ends(node):
    fresh_setup, gate = gated_task_in_a_dead_runner(node[0], "orphan", 0)
    wait_until(lambda: launch.find_task_leader("orphan"), 10, "the task to run")
    [keeper] = keepers_below(fresh_setup.state_dir)
    keeper.kill()
    keeper.wait(5)
    fresh, outbox, pump, taken_over = serve(fresh_setup)  # starts a new keeper, which never heard of the task
    assert [s.task_id for s in taken_over] == ["orphan"]
    open(gate, "w").close()
    r = result(outbox, "orphan")
    pump.stop()
    assert r.exit_code is None and "keeper was killed" in r.error


def test_a_state_folder_too_long_for_a_unix_socket_path_still_works(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # the socket's own path would pass the 108-byte limit
    (tmp_path / "shared").mkdir()
    (tmp_path / "tmp").mkdir()
    deep.mkdir(parents=True, mode=0o700)
    setup = NodeSetup("n", str(tmp_path / "shared"), str(tmp_path / "tmp"), "", 0.5, str(deep), ())
    sup, outbox, pump, _ = serve(setup)
    try:
        sup.launch([order("long", "sh", "-c", "exit 5")])
        assert result(outbox, "long").exit_code == 5
    finally:
        pump.stop()
        sup.keeper.close()
        for proc in keepers_below(str(tmp_path)):
            proc.kill()


def test_an_exit_logged_by_a_keeper_that_then_died_still_reaches_the_journal(node):
    fresh_setup, gate = gated_task_in_a_dead_runner(node[0], "logged", 4)
    open(gate, "w").close()  # the task ends while no runner listens: only the keeper's log has its exit
    exits_log = Path(fresh_setup.state_dir, "exits")
    wait_until(lambda: exits_log.exists() and '"logged"' in exits_log.read_text(), 10, "the exit in the keeper's log")
    [keeper] = keepers_below(fresh_setup.state_dir)
    keeper.kill()
    keeper.wait(5)
    fresh, outbox, pump, taken_over = serve(fresh_setup)  # a new keeper, which reads the log
    try:
        r = result(outbox, "logged")
        assert (r.exit_code, r.error, taken_over) == (4, "", [])
    finally:
        pump.stop()


def attempt(task_id: str, n: int, *argv: str, time_limit: float | None = None) -> p.LaunchOrder:
    return p.LaunchOrder(task_id, argv[0], list(argv[1:]), {}, [0], attempt=n, time_limit=time_limit,
                         earlier_output=n - 1)


def test_each_attempt_is_a_run_of_its_own_and_a_repeated_order_runs_once(node):
    setup, sup, outbox, started = node
    gate = os.path.join(setup.shared_dir, "gate")
    script = f'echo "$HAKURIVER_ATTEMPT"; while [ ! -e {gate} ]; do sleep 0.02; done'
    sup.launch([attempt("t", 1, "sh", "-c", script)])
    # (the host orders attempt 2 only after attempt 1 ended, or after its node was silent for the heartbeat timeout)
    wait_until(lambda: Path(setup.output_dir, "t.out").exists(), 10, "attempt 1 to start")
    sup.launch([attempt("t", 2, "sh", "-c", script), attempt("t", 1, "sh", "-c", script)])  # 1 again: ignored
    sup.launch([attempt("t", 2, "sh", "-c", script)])
    assert sup.held() == {"t", "t.2"}
    assert sorted((s.task_id, s.attempt) for s in started) == [("t", 1), ("t", 2)]
    open(gate, "w").close()
    wait_until(lambda: {(r.task_id, r.attempt) for r in outbox.pending(10)} == {("t", 1), ("t", 2)}, 10, "both ended")
    out = Path(setup.output_dir)
    # attempt 2 moved attempt 1's output aside before it started
    assert (out / "t.1.out").read_text() == "1\n" and (out / "t.out").read_text() == "2\n"
    outbox.ack(["t"])
    assert {(r.task_id, r.attempt) for r in outbox.pending(10)} == {("t", 2)}


def test_the_keeper_ends_a_task_at_its_time_limit_even_one_that_ignores_sigterm(node):
    _, sup, outbox, _ = node
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    sup.launch([attempt("slow", 1, sys.executable, "-c", ignore, time_limit=0.5)])
    r = result(outbox, "slow")
    assert r.timed_out and not r.killed and r.error == "time limit of 0.5s reached"
    assert r.cpu_user_seconds is not None  # reaped by the keeper: its usage is known
    assert launch.find_task_leader("slow") is None


def test_an_orphan_is_held_to_its_time_limit_by_the_runner(node):
    """The keeper that held the deadline is gone: the runner's watch of the orphan enforces it."""
    setup, sup, outbox, _ = node
    sup.launch([attempt("limited", 3, "sleep", "60", time_limit=1.5)])
    wait_until(lambda: launch.find_task_leader("limited", 3), 10, "the task to run")
    [keeper] = keepers_below(setup.state_dir)
    keeper.kill()
    r = result(outbox, "limited")
    assert (r.attempt, r.timed_out) == (3, True) and "time limit" in r.error
    assert launch.find_task_leader("limited", 3) is None


def test_the_runner_keeps_time_limits_when_its_keeper_is_from_an_earlier_release(node):
    """A keeper outlives an upgrade of its runner; one of the release before time limits ignores
    them (it says so by not saying `limits` in its State): the runner's own watch ends the task."""
    _, sup, outbox, _ = node
    sup._take_over(State(running=[], exits=[]))  # what such a keeper answers: no `limits`
    sup.launch([attempt("old", 1, "sleep", "60", time_limit=0.5)])
    r = result(outbox, "old")
    assert (r.timed_out, r.killed, r.error) == (True, False, "time limit of 0.5s reached")
    assert launch.find_task_leader("old") is None
