"""The runner's watch over tasks whose keeper was lost, and over time limits an old keeper does not keep.

Part of `Supervisor` (supervisor.py), kept apart as one concern: a task whose keeper was killed
is found again by the HAKURIVER_TASK_ID in its environment and watched by polling until it ends,
without an exit status (only its parent could collect one); the runner kills it itself. These
methods use the supervisor's records, lock and outbox.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from hakuriver import durations
from hakuriver import protocol as p
from hakuriver.runner import launch, task_files
from hakuriver.runner.journal import TaskRecord
from hakuriver.runner.outbox import Outbox

log = logging.getLogger("hakuriver.runner")

#: seconds between checks of a task whose keeper was lost
ORPHAN_POLL = 0.25


class OrphanWatch:
    """The orphan-watching half of `Supervisor` (a mixin: its state is the supervisor's)."""

    _lock: threading.Lock
    _records: dict[str, TaskRecord]
    _orphans: set[str]
    _watch: threading.Thread | None
    _keeper_limits: bool
    _timed_out: set[str]
    outbox: Outbox

    def _adopt_orphan(self, rec: TaskRecord) -> bool:
        """Watch a task the keeper does not know; False (and its result) if it is not running."""
        leader = launch.find_task_leader(rec.task_id, rec.attempt)
        if leader is None and not os.path.exists(rec.stdout):
            # the keeper makes a task's output files before it starts it: this one never started
            # (queued ahead behind a busy core, or the Spawn never reached the keeper)
            self.outbox.add([p.TaskFinished(rec.task_id, time.time(), error="its keeper was lost before it started it: "
                                            "handed back unrun", stdout_path=rec.stdout, stderr_path=rec.stderr,
                                            attempt=rec.attempt, returned=True)])
            return False
        if leader is None:
            self._finish_orphan(rec, "ended without an exit status: its keeper was killed")
            return False
        rec.pid, rec.start_time = leader
        with self._lock:
            self._orphans.add(rec.key)
        self._ensure_watch()
        if rec.killing:
            threading.Thread(target=self._kill_orphan, args=(rec,), daemon=True).start()
        return True

    def _ensure_watch(self) -> None:
        with self._lock:
            if self._watch is None:
                self._watch = threading.Thread(target=self._watch_loop, name="watch", daemon=True)
                self._watch.start()

    def _watch_loop(self) -> None:
        """Tasks whose keeper was lost, and time limits an old keeper does not keep."""
        while True:
            time.sleep(ORPHAN_POLL)
            self._watch_orphans()
            if not self._keeper_limits:
                self._watch_limits()

    def _watch_limits(self) -> None:
        now = time.time()
        with self._lock:
            due = [rec.key for key, rec in self._records.items() if key not in self._orphans and not rec.killing
                   and rec.time_limit is not None and now >= rec.started_at + rec.time_limit]
            self._timed_out.update(due)
        for key in due:
            log.info("task %s reached its time limit", key)
            self.kill(key)

    def _watch_orphans(self) -> None:
        with self._lock:
            watched = [self._records[t] for t in self._orphans if t in self._records]
        for rec in watched:
            if rec.killing:
                continue
            if not launch.is_alive(rec.pid, rec.start_time):
                self._finish_orphan(rec, "ended after its keeper was killed: no exit status")
            elif rec.time_limit is not None and time.time() >= rec.started_at + rec.time_limit:
                rec.killing = True  # the keeper that held its deadline is gone: the runner keeps it
                threading.Thread(target=self._kill_orphan, args=(rec, True), daemon=True).start()

    def _kill_orphan(self, rec: TaskRecord, timed_out: bool = False) -> None:
        if launch.is_alive(rec.pid, rec.start_time):
            launch.kill_tree(rec.pid, self.setup.kill_grace)
        if timed_out:
            self._finish_orphan(rec, limit_reached(rec), timed_out=True)
        else:
            self._finish_orphan(rec, "killed by user", killed=True)

    def _finish_orphan(self, rec: TaskRecord, error: str, killed: bool = False, timed_out: bool = False) -> None:
        with self._lock:
            self._orphans.discard(rec.key)
        self.outbox.add([p.TaskFinished(rec.task_id, time.time(), error=error, killed=killed, started_at=rec.started_at,
                                        stdout_path=rec.stdout, stderr_path=rec.stderr, timed_out=timed_out,
                                        attempt=rec.attempt, unix_user=self._ran_as(rec))])
        task_files.remove_folder(rec.temp_dir)


def limit_reached(rec: TaskRecord) -> str:
    return durations.limit_reached(rec.time_limit or 0)
