"""The runner's durable state as one append-only file: launches, kills, results, acknowledgements.

One small append per event replaces a file created, renamed and deleted per record: file
metadata operations were the runners' largest cost per task. The journal is replayed when the
runner starts, and rewritten with only what is still live whenever it has grown well past that.
Only the runner process writes it, always under one lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

import msgspec

from hakuriver import protocol as p
from hakuriver.core.model import run_key

log = logging.getLogger("hakuriver.runner")

LAUNCHED, KILLING, FINISHED, ACKED = b"L", b"K", b"F", b"A"
#: rewrite once this many lines beyond the live ones have accumulated
COMPACT_SLACK = 20_000


class TaskRecord(msgspec.Struct):
    """What a restarted runner needs to take a task over; journaled before the keeper is asked to start it."""

    task_id: str
    started_at: float
    stdout: str
    stderr: str
    temp_dir: str
    killing: bool = False
    #: only for a task whose keeper was lost: its first process, found again by the task ID
    pid: int = 0
    start_time: float | None = None
    attempt: int = 1
    #: seconds it may run (enforced by the keeper, or by the runner for a task whose keeper was lost)
    time_limit: float | None = None
    #: the Unix user it runs as ("" in a journal of an earlier release)
    unix_user: str = ""

    @property
    def key(self) -> str:
        """The attempt's run key: what the keeper, the journal and the host's orders name it by."""
        return run_key(self.task_id, self.attempt)


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        #: launched and not finished, by run key (core/model.py run_key: one per attempt)
        self.records: dict[str, TaskRecord] = {}
        #: finished and not yet acknowledged by the host, by run key
        self.results: dict[str, p.TaskFinished] = {}
        self._fd = -1
        self._lines = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._replay()
        self._rewrite()

    @staticmethod
    def peek(path: str) -> tuple[dict[str, TaskRecord], dict[str, p.TaskFinished]]:
        """Read a journal without touching it (for operators and tests): live records and results, by run key."""
        view = Journal.__new__(Journal)
        view.path, view.records, view.results = path, {}, {}
        view._replay()
        return view.records, view.results

    # ---- events ----------------------------------------------------------------------------
    def launched(self, recs: list[TaskRecord]) -> None:
        with self.lock:
            for rec in recs:
                self.records[rec.key] = rec
            self._append([LAUNCHED + b" " + _record_line(rec) for rec in recs])

    def killing(self, key: str) -> None:
        with self.lock:
            rec = self.records.get(key)
            if rec is not None:
                rec.killing = True
                self._append([KILLING + b" " + msgspec.json.encode(key)])

    def finished(self, results: list[p.TaskFinished]) -> None:
        """Each result is kept and its record dropped in one append: never neither, never both lost."""
        with self.lock:
            for result in results:
                key = run_key(result.task_id, result.attempt)
                self.records.pop(key, None)
                self.results[key] = result
            self._append([FINISHED + b" " + p.encode(result) for result in results])

    def acked(self, keys: Iterable[str]) -> None:
        with self.lock:
            done = [k for k in keys if self.results.pop(k, None) is not None]
            if done:
                self._append([ACKED + b" " + msgspec.json.encode(done)])

    # ---- file ------------------------------------------------------------------------------
    def _append(self, lines: list[bytes]) -> None:
        """Lines in one write: a crash tears at most the last line, which replay skips."""
        if not lines:
            return
        try:
            os.write(self._fd, b"\n".join(lines) + b"\n")
        except OSError as exc:
            log.error("cannot write the runner journal %s (%s): these events live in memory only",
                      self.path, exc.strerror or exc)
            return
        self._lines += len(lines)
        if self._lines > len(self.records) + len(self.results) + COMPACT_SLACK:
            self._rewrite()

    def _replay(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    self._apply(line)
        except FileNotFoundError:
            pass

    def _apply(self, line: bytes) -> None:
        kind, _, payload = line.rstrip(b"\n").partition(b" ")
        try:
            if kind == LAUNCHED:
                rec = msgspec.json.decode(payload, type=TaskRecord)
                self.records[rec.key] = rec
            elif kind == KILLING:
                rec = self.records.get(msgspec.json.decode(payload, type=str))
                if rec is not None:
                    rec.killing = True
            elif kind == FINISHED:
                result = p.decode(payload, p.TaskFinished)
                key = run_key(result.task_id, result.attempt)
                self.records.pop(key, None)
                self.results[key] = result
            elif kind == ACKED:
                for key in msgspec.json.decode(payload, type=list[str]):
                    self.results.pop(key, None)
        except (msgspec.DecodeError, p.DecodeError):
            log.warning("skipping a torn line in the runner journal %s", self.path)

    def _rewrite(self) -> None:
        """Replace the file with the live state only (write aside, then rename)."""
        with self.lock:
            lines = [LAUNCHED + b" " + _record_line(r) + b"\n" for r in self.records.values()]
            lines += [FINISHED + b" " + p.encode(r) + b"\n" for r in self.results.values()]
            try:
                with open(self.path + ".tmp", "wb") as fh:
                    fh.writelines(lines)
                os.replace(self.path + ".tmp", self.path)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                log.error("cannot rewrite the runner journal %s (%s)", self.path, exc.strerror or exc)
                if self._fd < 0:
                    raise
                return
            if self._fd >= 0:
                os.close(self._fd)
            self._fd, self._lines = fd, len(lines)


def _record_line(rec: TaskRecord) -> bytes:
    return msgspec.json.encode(msgspec.structs.replace(rec, pid=0, start_time=None))
