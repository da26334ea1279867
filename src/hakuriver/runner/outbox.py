"""A final result is never lost: journaled on node-local disk first, resent until acknowledged."""

from __future__ import annotations

from collections.abc import Callable

from hakuriver.protocol import TaskFinished
from hakuriver.runner.journal import Journal


class Outbox:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        #: called after each add, so that the sender wakes up
        self.on_add: Callable[[], None] = lambda: None

    def add(self, results: list[TaskFinished]) -> None:
        """Returns once the results are in the journal (or, if the disk refuses, in memory: logged)."""
        self.journal.finished(results)
        self.on_add()

    def ack(self, keys: list[str]) -> None:
        self.journal.acked(keys)

    def ids(self) -> set[str]:
        """Run keys of the results not yet acknowledged."""
        with self.journal.lock:
            return set(self.journal.results)

    def __contains__(self, key: str) -> bool:
        with self.journal.lock:
            return key in self.journal.results

    def has_pending(self) -> bool:
        return bool(self.journal.results)  # a read of one dict's size: no lock needed

    def pending(self, limit: int) -> list[TaskFinished]:
        with self.journal.lock:
            return list(self.journal.results.values())[:limit]
