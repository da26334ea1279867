"""The keeper's exits log: the exits the runner has not forgotten, on node-local disk.

Apart from keeper.py to keep that file to the loop and its tasks. The keeper appends each exit
here before it tells the runner (the runner may be gone), so that a keeper started after this
one died still hands them over. One Exit per line; on load, the last line of a run key wins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import msgspec

from hakuriver.runner.keeper_wire import Exit, encode_lines

log = logging.getLogger("hakuriver.keeper")

EXITS_NAME = "exits"
#: the log is rewritten with only the unforgotten exits once it holds this many lines beyond them
EXITS_LOG_SLACK = 10_000
_exit_line = msgspec.json.Decoder(Exit).decode


class ExitsLog:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, EXITS_NAME)
        #: the exits the runner has not forgotten yet, by run key
        self.exits: dict[str, Exit] = {}
        self._lines = 0
        self._fd = -1
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def append(self, exits: list[Exit]) -> None:
        try:
            os.write(self._fd, encode_lines(exits))
            self._lines += len(exits)
        except OSError as exc:
            log.error("cannot append to %s (%s): these exits live in memory only", self.path, exc.strerror)
        for ex in exits:
            self.exits[ex.task_id] = ex
        self._compact_if_due()

    def forget(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self.exits.pop(task_id, None)
        self._compact_if_due()

    def _compact_if_due(self) -> None:
        if self._lines > len(self.exits) + EXITS_LOG_SLACK:
            self._rewrite()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    try:
                        ex = _exit_line(line)
                    except msgspec.DecodeError:
                        continue  # a torn last line
                    self.exits[ex.task_id] = ex
        except FileNotFoundError:
            return
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(encode_lines(self.exits.values()))
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = len(self.exits)
