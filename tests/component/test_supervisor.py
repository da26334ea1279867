"""The runner's supervisor with real `sh` children: exit codes, signals, kill, re-adoption."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from hakuriver import protocol as p
from hakuriver.runner.journal import Journal
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import NodeSetup, Supervisor
from support import wait_until


@pytest.fixture
def node(tmp_path):  # noqa: ANN001, ANN201
    (tmp_path / "shared").mkdir()
    (tmp_path / "tmp").mkdir()
    setup = NodeSetup("n", str(tmp_path / "shared"), str(tmp_path / "tmp"), "", 0.5, str(tmp_path / "state"), ())
    started: list[p.TaskStarted] = []
    outbox = Outbox(Journal(os.path.join(setup.state_dir, "journal")))
    sup = Supervisor(setup, outbox, started.append)
    stop = threading.Event()
    threading.Thread(target=sup.reap_forever, args=(stop,), daemon=True).start()
    yield setup, sup, outbox, started
    stop.set()


def order(task_id: str, *argv: str) -> p.LaunchOrder:
    return p.LaunchOrder(task_id, argv[0], list(argv[1:]), {}, [0])


def result(outbox: Outbox, task_id: str) -> p.TaskFinished:
    return wait_until(lambda: next((r for r in outbox.pending(100) if r.task_id == task_id), None), 10, task_id)


def test_exit_codes_reach_the_outbox(node):
    _, sup, outbox, started = node
    sup.launch(order("ok", "true"))
    sup.launch(order("three", "sh", "-c", "exit 3"))
    assert result(outbox, "ok").exit_code == 0
    assert result(outbox, "three").exit_code == 3
    assert {s.task_id for s in started} == {"ok", "three"}
    assert sup.held() == set()


def test_signal_death_is_reported(node):
    _, sup, outbox, _ = node
    sup.launch(order("sig", "sh", "-c", "kill -9 $$"))
    r = result(outbox, "sig")
    assert r.signal == 9 and "killed by signal 9" in r.error


def test_repeated_launch_order_runs_once(node):
    setup, sup, outbox, started = node
    counter = os.path.join(setup.shared_dir, "count")
    o = order("once", "sh", "-c", f"echo x >> {counter}")
    sup.launch(o)
    result(outbox, "once")
    sup.launch(o)  # e.g. an order repeated after a lost answer: the result is still in the outbox
    time.sleep(0.2)
    assert open(counter).read() == "x\n" and len(started) == 1


def test_missing_shared_output_fails_with_a_reason(node, tmp_path):
    setup, sup, outbox, _ = node
    os.rename(setup.shared_dir, str(tmp_path / "moved"))
    open(setup.shared_dir, "w").close()  # a file where the folder was: nothing can be written below it
    sup.launch(order("noout", "true"))
    r = result(outbox, "noout")
    assert r.exit_code is None and "cannot write the task's output" in r.error


def test_kill_reports_killed_after_the_tree_is_gone(node):
    _, sup, outbox, _ = node
    sup.launch(order("k", "sh", "-c", 'trap "" TERM; sleep 30'))
    wait_until(lambda: "k" in sup.held(), 5, "launch")
    sup.kill("k")
    r = result(outbox, "k")
    assert r.killed and r.error == "killed by user"


LAUNCH_AND_DIE = """
import os, sys
from hakuriver import protocol as p
from hakuriver.runner.journal import Journal
from hakuriver.runner.journal import Journal
from hakuriver.runner.outbox import Outbox
from hakuriver.runner.supervisor import NodeSetup, Supervisor
setup = NodeSetup("n", sys.argv[1], sys.argv[2], "", 0.5, sys.argv[3], ())
os.makedirs(setup.state_dir, exist_ok=True)
sup = Supervisor(setup, Outbox(Journal(os.path.join(setup.state_dir, "journal"))), lambda e: None)
sup.launch(p.LaunchOrder(sys.argv[4], "sh", ["-c", sys.argv[5]], {}, [0]))
os._exit(0)  # like a runner killed with SIGKILL: nothing reaped, nothing cleaned up
"""


def test_a_new_supervisor_adopts_tasks_left_by_a_dead_runner(node):
    setup, _, _, _ = node
    gate = f"{setup.shared_dir}/go"
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 6"
    subprocess.run([sys.executable, "-c", LAUNCH_AND_DIE, setup.shared_dir, setup.local_temp_dir, setup.state_dir + "2",
                    "adopt", script], check=True)
    fresh_setup = NodeSetup("n", setup.shared_dir, setup.local_temp_dir, "", 0.5, setup.state_dir + "2", ())
    outbox = Outbox(Journal(os.path.join(fresh_setup.state_dir, "journal")))
    fresh = Supervisor(fresh_setup, outbox, lambda e: None)
    assert [s.task_id for s in fresh.adopt_previous()] == ["adopt"]
    stop = threading.Event()
    threading.Thread(target=fresh.reap_forever, args=(stop,), daemon=True).start()
    assert fresh.held() == {"adopt"}
    open(gate, "w").close()
    r = result(outbox, "adopt")
    stop.set()
    assert r.exit_code == 6 and r.error == ""
    assert fresh.held() == set()
