"""The runner's supervisor with a real keeper and real children: exit codes, signals, kill, take-over."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hakuriver import protocol as p
from hakuriver.runner import launch
from hakuriver.runner.journal import Journal
from hakuriver.runner.keeper_wire import State
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
def walkable():  # noqa: ANN201
    """A folder every user may walk through (pytest's tmp_path lies under a 0700 folder): a task
    run as another user enters its working folder as that user, as on a real node."""
    folder = Path(tempfile.mkdtemp(prefix="hr-node-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def node(walkable):  # noqa: ANN001, ANN201
    tmp_path = walkable
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


def test_an_executable_script_without_a_shebang_line_runs_with_sh(node):
    setup, sup, outbox, _ = node
    script = Path(setup.shared_dir, "plain.sh")
    script.write_text('echo "ran with $1"; exit 7\n')  # no "#!": the kernel cannot execute it (ENOEXEC)
    script.chmod(0o755)
    sup.launch([order("plain", str(script), "args")])
    assert result(outbox, "plain").exit_code == 7
    assert Path(setup.output_dir, "plain.out").read_text() == "ran with args\n"


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
from hakuriver.runner.keeper_wire import State
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import NodeSetup, Supervisor
setup = NodeSetup("n", sys.argv[1], sys.argv[2], "", 0.5, sys.argv[3], ())
os.makedirs(setup.state_dir, exist_ok=True)
sup = Supervisor(setup, Outbox(Journal(os.path.join(setup.state_dir, "journal"))), lambda e: None)
sup.start()
sup.launch([p.LaunchOrder(sys.argv[4], "sh", ["-c", sys.argv[5]], {}, [0], owner=sys.argv[6])])
os._exit(0)  # like a runner killed with SIGKILL: nothing journaled after this, nothing cleaned up
"""


def gated_task_in_a_dead_runner(setup: NodeSetup, task_id: str, code: int, owner: str = "") -> tuple[NodeSetup, str]:
    # a task of another user waits on a gate in its scratch folder, its working folder: tmp_path is root's alone
    scratch = os.path.join(setup.local_temp_dir, f"hakuriver-task-{task_id}")
    gate = os.path.join(scratch, "go") if owner else f"{setup.shared_dir}/go-{task_id}"
    script = f"while [ ! -e {'go' if owner else gate} ]; do sleep 0.05; done; exit {code}"
    state = setup.state_dir + "-" + task_id
    subprocess.run([sys.executable, "-c", LAUNCH_AND_DIE, setup.shared_dir, setup.local_temp_dir, state, task_id,
                    script, owner], check=True)
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


# ---- run as the owner (SPEC §12) -------------------------------------------------------------
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only a root runner runs tasks as their owners' Unix users")
OTHER = "nobody"  # an account every Linux system has, not root


def owned(task_id: str, script: str, owner: str = OTHER, **kw) -> p.LaunchOrder:  # noqa: ANN003
    return p.LaunchOrder(task_id, "sh", ["-c", script], kw.pop("env", {}), [0], owner=owner, **kw)


@as_root
def test_a_root_runner_runs_a_task_as_its_owners_account(node):
    setup, sup, outbox, started = node
    who = pwd.getpwnam(OTHER)
    # (its scratch folder is its working folder here: the task can stat it without walking tmp_path's 0700 parents)
    script = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; stat -c %u .; grep Cpus_allowed_list /proc/self/status'
    sup.launch([owned("as-other", script)])
    r = result(outbox, "as-other")
    assert (r.exit_code, r.unix_user) == (0, OTHER)
    assert [s.unix_user for s in started if s.task_id == "as-other"] == [OTHER]
    out = Path(setup.output_dir, "as-other.out")
    uid, gid, groups, env, scratch_owner, cpus = out.read_text().splitlines()
    assert (uid, gid, scratch_owner) == (str(who.pw_uid), str(who.pw_gid), str(who.pw_uid))
    assert set(groups.split()) == {str(g) for g in os.getgrouplist(OTHER, who.pw_gid)}  # none of root's
    assert env == f"{who.pw_dir} {OTHER} {OTHER}"
    assert cpus.split() == ["Cpus_allowed_list:", "0"]  # pinned like a task started the fast way
    assert out.stat().st_uid == Path(setup.output_dir, "as-other.err").stat().st_uid == who.pw_uid


@as_root
def test_the_owners_env_wins_over_their_account_and_root_runs_as_root(node):
    setup, sup, outbox, _ = node
    sup.launch([owned("own-home", 'echo "$HOME $USER"', env={"HOME": "/elsewhere"}),
                owned("root", "id -u", owner="root"), owned("before-owners", "id -u", owner="")])
    assert result(outbox, "own-home").exit_code == 0
    assert Path(setup.output_dir, "own-home.out").read_text() == f"/elsewhere {OTHER}\n"
    for task_id in ("root", "before-owners"):  # no switch: the keeper's fast path, as root
        out = Path(setup.output_dir, f"{task_id}.out")
        assert (result(outbox, task_id).unix_user, out.read_text()) == ("root", "0\n")


@as_root
def test_exit_codes_of_tasks_run_as_another_user_are_never_lost(node):
    """The keeper reaps every child itself; a Popen must not take an exit status from it."""
    _, sup, outbox, _ = node
    orders = [owned(f"m{i}", f"exit {i}", owner=OTHER if i % 2 else "root") for i in range(30)]
    for start in range(0, len(orders), 5):
        sup.launch(orders[start:start + 5])
    for i in range(30):
        r = result(outbox, f"m{i}")
        assert (r.exit_code, r.unix_user) == (i, OTHER if i % 2 else "root")


@as_root
def test_numactl_binds_a_task_run_as_another_user(walkable):
    tmp_path = walkable
    (tmp_path / "shared").mkdir()
    (tmp_path / "tmp").mkdir()
    numactl = shutil.which("numactl")
    if numactl is None:
        pytest.skip("numactl is not installed")
    setup = NodeSetup("n", str(tmp_path / "shared"), str(tmp_path / "tmp"), numactl, 0.5, str(tmp_path / "state"), ())
    os.makedirs(setup.state_dir, mode=0o700)
    sup, outbox, pump, _ = serve(setup)
    try:
        sup.launch([owned("numa", "id -un; grep Cpus_allowed_list /proc/self/status")])
        assert result(outbox, "numa").exit_code == 0
        name, cpus = Path(setup.output_dir, "numa.out").read_text().splitlines()
        assert (name, cpus.split()) == (OTHER, ["Cpus_allowed_list:", "0"])
    finally:
        pump.stop()
        sup.keeper.close()
        for proc in keepers_below(str(tmp_path)):
            proc.kill()


@as_root
def test_an_owner_without_an_account_on_the_node_is_refused(node):
    setup, sup, outbox, started = node
    ghost = f"nosuch_{os.getpid()}"
    sup.launch([owned("ghost", f"touch {setup.shared_dir}/ran", owner=ghost)])
    r = result(outbox, "ghost")
    assert r.started_at is None and r.exit_code is None and not started
    assert r.error == (f'no Unix user "{ghost}" on node n: tasks run as their owner\'s account; '
                       "create it there, or submit as a user that has one")
    assert not Path(setup.shared_dir, "ran").exists()


@as_root
def test_a_keeper_of_an_earlier_release_is_never_given_a_task_to_run_as_another_user(node):
    """Such a keeper ignores the user in a Spawn: it would run the task as root. Its State does
    not say `users`, and the runner then refuses those tasks (it still runs root's own)."""
    setup, sup, outbox, _ = node
    sup._take_over(State(running=[], exits=[], limits=True))  # what such a keeper answers: no `users`
    sup.launch([owned("switch", f"touch {setup.shared_dir}/ran"), owned("mine", "true", owner="root")])
    r = result(outbox, "switch")
    assert r.started_at is None and "from an earlier release" in r.error and f"not as {OTHER}" in r.error
    assert "\n" not in r.error and not Path(setup.shared_dir, "ran").exists()
    assert result(outbox, "mine").exit_code == 0
    sup._take_over(State(running=[], exits=[], limits=True, users=True))  # a current keeper again


def test_a_runner_reports_the_unix_user_its_tasks_ran_as(node):
    """As root, a task of no owner (from before owners) runs as the runner; not root, every task does."""
    _, sup, outbox, started = node
    sup.launch([owned("mine", "true", owner="")])
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert result(outbox, "mine").unix_user == me
    assert [s.unix_user for s in started] == [me]


@as_root
def test_a_task_run_as_another_user_is_killed_and_taken_over_as_that_user(node):
    _, sup, outbox, _ = node
    sup.launch([owned("k-other", 'trap "" TERM; sleep 30')])
    wait_until(lambda: launch.find_task_leader("k-other"), 10, "the task to run")
    sup.kill("k-other")
    r = result(outbox, "k-other")
    assert (r.killed, r.unix_user) == (True, OTHER) and launch.find_task_leader("k-other") is None
    # a runner restarted while such a task runs still reports whom it runs as (the journal does not say)
    fresh_setup, gate = gated_task_in_a_dead_runner(node[0], "adopt-other", 5, owner=OTHER)
    fresh, fresh_outbox, pump, taken_over = serve(fresh_setup)
    assert [(s.task_id, s.unix_user) for s in taken_over] == [("adopt-other", OTHER)]
    open(gate, "w").close()
    r = result(fresh_outbox, "adopt-other")
    pump.stop()
    assert (r.exit_code, r.unix_user) == (5, OTHER)


@as_root
def test_a_task_enters_its_working_folder_as_its_owner_not_as_root(node, walkable):
    """Root may walk into a folder inside another user's private one; the owner of the task may not."""
    setup, sup, outbox, _ = node
    private = walkable / "private"
    (private / "open").mkdir(parents=True)
    private.chmod(0o700)  # root's, like a home folder
    (private / "open" / "data.txt").write_text("root's data\n")
    sup.launch([owned("peek", "cat data.txt", cwd=str(private / "open"))])
    r = result(outbox, "peek")
    assert r.exit_code != 0
    assert "root's data" not in Path(setup.output_dir, "peek.out").read_text()


@as_root
def test_a_task_of_another_user_gets_none_of_the_runners_secrets(walkable, monkeypatch):
    monkeypatch.setenv("HAKURIVER_TOKEN", "the-admins-token")
    monkeypatch.setenv("ROOTS_OWN_SECRET", "root-only")
    (walkable / "shared").mkdir()
    (walkable / "tmp").mkdir()
    setup = NodeSetup("n", str(walkable / "shared"), str(walkable / "tmp"), "", 0.5, str(walkable / "state"), ())
    os.makedirs(setup.state_dir, mode=0o700)
    sup, outbox, pump, _ = serve(setup)
    try:
        sup.launch([owned("env-other", "env"), order("env-own", "env")])
        assert result(outbox, "env-other").exit_code == 0 and result(outbox, "env-own").exit_code == 0
        other = Path(setup.output_dir, "env-other.out").read_text()
        own = Path(setup.output_dir, "env-own.out").read_text()
        assert "ROOTS_OWN_SECRET" not in other and "the-admins-token" not in other
        assert "PATH=" in other and f"HOME={pwd.getpwnam(OTHER).pw_dir}" in other
        assert "ROOTS_OWN_SECRET=root-only" in own and "the-admins-token" not in own  # a token is never passed on
        assert os.stat(Path(setup.output_dir, "env-other.out")).st_mode & 0o077 == 0  # theirs alone
    finally:
        pump.stop()
        sup.keeper.close()
        for proc in keepers_below(str(walkable)):
            proc.kill()


def queued(task_id: str, *argv: str, wait_limit: float = 30.0) -> p.LaunchOrder:
    """A launch for core 0 from a host that queues ahead on this node."""
    return p.LaunchOrder(task_id, argv[0], list(argv[1:]), {}, [0], wait_limit=wait_limit)


def test_a_task_queued_behind_a_busy_core_begins_when_it_frees_and_is_reported_started_then(node):
    setup, sup, outbox, started = node
    assert sup.queues_ahead  # this release's keeper holds launches for busy cores
    gate = os.path.join(setup.shared_dir, "gate")
    sup.launch([queued("first", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"), queued("behind", "true")])
    wait_until(lambda: [s.task_id for s in started] == ["first"], 10, "the first task started")
    assert sup.waiting_count() == 1 and not Path(setup.output_dir, "behind.out").exists()  # it waits for core 0
    open(gate, "w").close()
    assert result(outbox, "behind").exit_code == 0
    assert [s.task_id for s in started] == ["first", "behind"] and sup.waiting_count() == 0


def test_a_keeper_lost_with_a_task_queued_in_it_hands_that_task_back_and_queues_nothing_while_its_tasks_run(node):
    setup, sup, outbox, _ = node
    gate = os.path.join(setup.shared_dir, "gate")
    sup.launch([queued("first", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"), queued("behind", "true")])
    wait_until(lambda: launch.find_task_leader("first"), 10, "the first task to run")
    [keeper] = keepers_below(setup.state_dir)
    keeper.kill()  # its line for core 0 goes with it; the pump starts a new keeper, which knows nothing of "first"
    back = result(outbox, "behind")
    assert back.returned and back.started_at is None and not Path(setup.output_dir, "behind.out").exists()
    wait_until(lambda: not sup.queues_ahead, 10, "the node to stop queueing ahead while the orphan runs")
    sup.launch([queued("next", "true")])  # a queued launch now would start beside the orphan: handed back instead
    assert result(outbox, "next").returned and not Path(setup.output_dir, "next.out").exists()
    open(gate, "w").close()
    result(outbox, "first")
    wait_until(lambda: sup.queues_ahead, 10, "queueing ahead again once the orphan ended")
