"""The keeper's Starter: a task sees exactly the CPUs it was given, whatever the task before it
was given, and the keeper's own thread goes back to all its CPUs when told to (`unpin`).

The Starter pins the thread that calls it, so each check runs it on a thread of its own: the
test process's other threads keep their CPUs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hakuriver.runner.keeper_wire import Spawn
from hakuriver.runner.spawn import Starter

SH = "/bin/sh"

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs to pin to one")


def _allowed(text: str) -> set[int]:
    """The CPUs of a `Cpus_allowed_list:` line ("0-1,3")."""
    cpus: set[int] = set()
    for part in text.split(":", 1)[1].strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _run(starter: Starter, tmp_path: Path, name: str, cpus: list[int] | None) -> set[int]:
    """Start a task that prints the CPUs it may run on; those CPUs."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    msg = Spawn(task_id=name, path=SH, argv=[SH, "-c", "grep Cpus_allowed_list /proc/self/status"], env={},
                cwd=str(tmp_path), stdout=str(out), stderr=str(err), scratch=str(tmp_path / name), cpus=cpus)
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    err_fd = os.open(err, os.O_WRONLY | os.O_CREAT)
    try:
        pid = starter.start(msg, dict(os.environ), out_fd, err_fd)
    finally:
        os.close(out_fd)
        os.close(err_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err.read_text()
    return _allowed(out.read_text())


def _on_a_thread(work) -> None:  # noqa: ANN001
    """Run `work` on a thread of its own; the process's working folder is put back afterwards (the
    Starter enters a task's folder to start it there, as the keeper process does)."""
    failure: list[BaseException] = []

    def body() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=body)
    cwd = os.getcwd()
    try:
        thread.start()
        thread.join(30)
    finally:
        os.chdir(cwd)  # later tests submit from it: it must stay a folder other users can enter
    assert not thread.is_alive()
    if failure:
        raise failure[0]


def test_each_task_sees_exactly_its_cpus_and_the_keeper_goes_back_to_all_of_its_own(tmp_path):
    everything = os.sched_getaffinity(0)
    first, second = sorted(everything)[:2]

    def work() -> None:
        starter = Starter()
        assert _run(starter, tmp_path, "a", [first]) == {first}
        assert os.sched_getaffinity(0) == {first}  # stays: the next start may want the same CPU
        assert _run(starter, tmp_path, "b", [first]) == {first}
        assert _run(starter, tmp_path, "c", [second]) == {second}
        assert _run(starter, tmp_path, "d", None) == everything  # a task given no CPUs gets all the keeper's
        assert _run(starter, tmp_path, "e", [second]) == {second}
        starter.unpin()
        assert os.sched_getaffinity(0) == everything

    before = os.getcwd()
    _on_a_thread(work)
    assert os.sched_getaffinity(0) == everything  # the test's own thread was never pinned
    assert os.getcwd() == before
