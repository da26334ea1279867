"""The runner's live tasks: spawn, reap, kill, and re-adopt after a runner restart.

Each task has a small record on node-local disk (paths, start time), written *before* it is
spawned, so that a runner crash can never lead to a second launch of the same task. A restarted
runner reads the records back, finds each task's process by the HAKURIVER_TASK_ID in its
environment, and keeps watching it; their `sh` wrapper writes the exit
status to a file, so the real exit code survives the runner. Results go to the outbox before a
record is removed, so a crash between the two repeats a report but never loses one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hakuriver import protocol as p
from hakuriver.runner import launch
from hakuriver.runner.journal import TaskRecord
from hakuriver.runner.outbox import Outbox

log = logging.getLogger("hakuriver.runner")


@dataclass(frozen=True)
class NodeSetup:
    node: str
    shared_dir: str
    local_temp_dir: str
    numactl_path: str
    kill_grace: float
    state_dir: str
    #: oversubscribed runners only: the real CPUs that the logical core IDs map onto in turn
    cpus: tuple[int, ...]

    def physical(self, core_ids: list[int]) -> list[int]:
        return launch.physical_cpus(core_ids, self.cpus)

    @property
    def output_dir(self) -> str:
        return os.path.join(self.shared_dir, "task_outputs")


class Supervisor:
    def __init__(self, setup: NodeSetup, outbox: Outbox, on_started: Callable[[p.TaskStarted], None]) -> None:
        self.setup = setup
        self.outbox = outbox
        self.on_started = on_started
        self.journal = outbox.journal
        self.exit_dir = os.path.join(setup.state_dir, "exit")
        os.makedirs(self.exit_dir, exist_ok=True)
        # one lock for the journal and the live processes: a record and its process change together
        self._lock = threading.Condition(self.journal.lock)
        #: launched, not finished (the journal's own view, not a copy)
        self._records: dict[str, TaskRecord] = self.journal.records
        self._by_pid: dict[int, str] = {}
        #: tasks started by an earlier runner process: not our children, watched by polling
        self._adopted: set[str] = set()
        # os.environ decodes on every access; the runner's environment does not change
        self._base_env = dict(os.environ)
        self._commands = launch.CommandCheck()

    # ---- queries -------------------------------------------------------------------------
    def held(self) -> set[str]:
        with self._lock:
            return set(self._records)

    def __contains__(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._records

    def killing(self) -> set[str]:
        with self._lock:
            return {task_id for task_id, rec in self._records.items() if rec.killing}

    def running_count(self) -> int:
        with self._lock:
            return len(self._records)

    # ---- re-adoption ---------------------------------------------------------------------
    def adopt_previous(self) -> list[p.TaskStarted]:
        """Take over the tasks an earlier runner process left running (or finished)."""
        adopted = []
        with self._lock:
            previous = list(self._records.values())
        for rec in previous:
            leader = launch.find_task_leader(rec.task_id)
            if leader is not None:
                rec.pid, rec.start_time = leader
            with self._lock:
                self._adopted.add(rec.task_id)
            adopted.append(p.TaskStarted(rec.task_id, rec.started_at, rec.stdout, rec.stderr))
            if rec.killing:
                self.kill(rec.task_id, force=True)
        if adopted:
            log.info("re-adopted %d tasks left by the previous runner process", len(adopted))
        return adopted

    # ---- launch --------------------------------------------------------------------------
    def launch(self, order: p.LaunchOrder) -> None:
        if order.task_id in self or order.task_id in self.outbox:
            return  # a repeated order: this task is already ours
        now = time.time()
        paths = self._paths(order.task_id)
        try:
            problem = self._start(order, paths, now)
        except OSError as exc:
            problem = f"could not start: {exc.strerror or exc}"
        if problem:
            _remove_folder(paths.temp_dir)
            log.warning("task %s failed to start: %s", order.task_id, problem)
            self.outbox.add(p.TaskFinished(order.task_id, time.time(), error=problem, started_at=None,
                                           stdout_path=paths.stdout, stderr_path=paths.stderr))

    def _paths(self, task_id: str) -> launch.TaskPaths:
        s = self.setup
        return launch.TaskPaths(
            stdout=os.path.join(s.output_dir, f"{task_id}.out"),
            stderr=os.path.join(s.output_dir, f"{task_id}.err"),
            temp_dir=os.path.join(s.local_temp_dir, f"hakuriver-task-{task_id}"),
            exit_file=os.path.join(self.exit_dir, task_id),
        )

    def _start(self, order: p.LaunchOrder, paths: launch.TaskPaths, now: float) -> str | None:
        """Start the task; a reason if it cannot start."""
        s = self.setup
        try:
            out_fd, err_fd = _open_outputs(paths)
        except OSError as exc:
            return f"cannot write the task's output under {s.output_dir}: {exc.strerror}"
        try:
            problem = _scratch_problem(s.local_temp_dir)
            if problem:
                return problem
            try:
                os.mkdir(paths.temp_dir)
            except OSError as exc:
                return f"cannot create the task's temp folder {paths.temp_dir}: {exc.strerror}"
            env = launch.task_env(self._base_env, order.env, task_id=order.task_id, node=s.node, core_ids=order.core_ids,
                                  shared_dir=s.shared_dir, temp_dir=paths.temp_dir)
            cwd = launch.choose_cwd(order.cwd, paths.temp_dir)
            problem = self._commands.problem(order.command, env, cwd)
            if problem:
                os.write(err_fd, f"hakuriver: {problem}\n".encode())
                return problem
            argv = launch.task_argv(order.command, order.args, exit_file=paths.exit_file, cwd=cwd,
                                    cpus=s.physical(order.core_ids), numactl=s.numactl_path)
            rec = TaskRecord(order.task_id, now, paths.stdout, paths.stderr, paths.temp_dir, paths.exit_file)
            with self._lock:
                self.journal.launched(rec)  # before the spawn: a crash can never lead to a second launch
                pin = None if s.numactl_path else s.physical(order.core_ids)
                rec.pid = launch.spawn(argv, env, out_fd, err_fd, pin)  # OSError: the journaled result says so
                # no start time needed: an unreaped child's pid cannot be reused
                self._by_pid[rec.pid] = rec.task_id
                self._lock.notify_all()
            self.on_started(p.TaskStarted(rec.task_id, now, rec.stdout, rec.stderr))
            return None
        finally:
            os.close(out_fd)
            os.close(err_fd)

    # ---- kill ----------------------------------------------------------------------------
    def kill(self, task_id: str, force: bool = False) -> None:
        with self._lock:
            rec = self._records.get(task_id)
            if rec is None or (rec.killing and not force):
                return
            self.journal.killing(task_id)
        threading.Thread(target=self._kill_and_report, args=(rec,), name=f"kill-{task_id[:8]}", daemon=True).start()

    def _kill_and_report(self, rec: TaskRecord) -> None:
        if rec.pid and launch.is_alive(rec.pid, rec.start_time):
            launch.kill_tree(rec.pid, self.setup.kill_grace)
        self._finish(rec, p.TaskFinished(rec.task_id, time.time(), killed=True, error="killed by user",
                                         started_at=rec.started_at, stdout_path=rec.stdout, stderr_path=rec.stderr))

    # ---- reaping -------------------------------------------------------------------------
    def reap_forever(self, stop: threading.Event) -> None:
        """Collect our children as they exit; poll the adopted ones."""
        threading.Thread(target=self._watch_adopted, args=(stop,), name="adopted", daemon=True).start()
        while not stop.is_set():
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED)
            except ChildProcessError:
                with self._lock:
                    if not self._by_pid:
                        self._lock.wait(0.5)
                continue
            except InterruptedError:
                continue
            if info is not None:
                self._child_exited(info.si_pid, info.si_code, info.si_status)

    def _child_exited(self, pid: int, code: int, status: int) -> None:
        with self._lock:
            task_id = self._by_pid.pop(pid, None)
            rec = self._records.get(task_id) if task_id else None
        if rec is None or rec.killing:
            return  # the kill thread reports killed tasks once the whole tree is gone
        signaled = code in (os.CLD_KILLED, os.CLD_DUMPED)
        self._finish(rec, self._result(rec, signal=status if signaled else None))

    def _watch_adopted(self, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            with self._lock:
                candidates = [self._records[t] for t in self._adopted if t in self._records]
            for rec in candidates:
                if not rec.killing and not (rec.pid and launch.is_alive(rec.pid, rec.start_time)):
                    with self._lock:
                        self._adopted.discard(rec.task_id)
                    self._finish(rec, self._result(rec, signal=None, adopted=True))

    def _result(self, rec: TaskRecord, signal: int | None, adopted: bool = False) -> p.TaskFinished:
        exit_code, error = _read_exit_file(rec.exit_file), ""
        if exit_code is None:
            if signal is not None:
                error = f"killed by signal {signal} (not by HakuRiver)"
            elif adopted:
                error = "ended while its runner was down and left no exit status (killed by a signal?)"
            else:
                error = "ended without an exit status"
        elif exit_code > 128:
            signal = exit_code - 128
            error = f"killed by signal {signal} (not by HakuRiver)"
        elif exit_code == 126 and not os.path.isdir(rec.temp_dir):
            error = "its working directory disappeared"
        return p.TaskFinished(rec.task_id, time.time(), exit_code=exit_code, signal=signal, error=error,
                              started_at=rec.started_at, stdout_path=rec.stdout, stderr_path=rec.stderr)

    def _finish(self, rec: TaskRecord, result: p.TaskFinished) -> None:
        """Result and the end of the record in one journal line, then clean up the task's files."""
        self.outbox.add(result)  # also drops the record, in the same journal line
        with self._lock:
            self._adopted.discard(rec.task_id)
        _remove_folder(rec.temp_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rec.exit_file)


_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _open_outputs(paths: launch.TaskPaths) -> tuple[int, int]:
    try:
        out_fd = os.open(paths.stdout, _OUTPUT_FLAGS, 0o644)
    except FileNotFoundError:  # the first task (or someone removed the folder)
        os.makedirs(os.path.dirname(paths.stdout), exist_ok=True)
        out_fd = os.open(paths.stdout, _OUTPUT_FLAGS, 0o644)
    try:
        return out_fd, os.open(paths.stderr, _OUTPUT_FLAGS, 0o644)
    except OSError:
        os.close(out_fd)
        raise


def _remove_folder(path: str) -> None:
    try:
        os.rmdir(path)  # the common case: the task left its scratch folder empty
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


#: a task does not start on a scratch disk with less free space than this
MIN_SCRATCH_BYTES = 1024 * 1024


def _scratch_problem(folder: str) -> str | None:
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        return f"local_temp_dir {folder} is not usable: {exc.strerror}"
    free = st.f_bavail * st.f_frsize
    if free < MIN_SCRATCH_BYTES or st.f_favail == 0:
        return f"local_temp_dir {folder} is full ({free} bytes free); free some space on this node"
    return None


def _read_exit_file(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None
