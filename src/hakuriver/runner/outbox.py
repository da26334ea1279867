"""A final result is never lost: written to node-local disk first, resent until acknowledged."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from hakuriver import protocol as p
from hakuriver.protocol import TaskFinished

log = logging.getLogger("hakuriver.runner")


class Outbox:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self._lock = threading.Lock()
        self._results: dict[str, TaskFinished] = {}
        #: called after each add, so that the sender wakes up
        self.on_add: Callable[[], None] = lambda: None
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(".json"):
                try:
                    with open(path, "rb") as fh:
                        result = p.decode(fh.read(), TaskFinished)
                    self._results[result.task_id] = result
                except (OSError, p.DecodeError):
                    os.unlink(path)  # unreadable: cannot be delivered, would block the outbox forever
            elif name.endswith(".tmp"):
                os.unlink(path)

    def add(self, result: TaskFinished) -> None:
        """Returns once the result is on disk (atomically: write, then rename).

        If the disk refuses (full, read-only), the result is still kept in memory and sent: only
        a runner crash before delivery could then lose it, and the log says so.
        """
        path = os.path.join(self.folder, f"{result.task_id}.json")
        try:
            with open(path + ".tmp", "wb") as fh:
                fh.write(p.encode(result))
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.error("cannot store the result of task %s on disk (%s); keeping it in memory only",
                      result.task_id, exc.strerror or exc)
        with self._lock:
            self._results[result.task_id] = result
        self.on_add()

    def ack(self, task_ids: list[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                if self._results.pop(task_id, None) is not None:
                    try:
                        os.unlink(os.path.join(self.folder, f"{task_id}.json"))
                    except FileNotFoundError:
                        pass

    def ids(self) -> set[str]:
        with self._lock:
            return set(self._results)

    def __contains__(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._results

    def pending(self, limit: int) -> list[TaskFinished]:
        with self._lock:
            return list(self._results.values())[:limit]
