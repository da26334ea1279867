"""What changes, as it changes: the dashboard's server-sent events, built once for every watcher.

Each page of the dashboard keeps one `GET /api/events` open. The host does not compute an
answer per page: changes committed in a burst mark the hub dirty, and at most every
TICK seconds (and at least every IDLE_TICK, so heartbeat ages and offline nodes show) one
`cluster` snapshot and one `tasks` list of what changed are encoded once and handed to every
watcher. A watcher that cannot keep up gets the latest snapshot, never a growing backlog: 100
open dashboards cost one encoding and 100 socket writes per tick.

A page that follows one task (`?task=ID`) also gets its record when it changes and the new
bytes of its stdout and stderr, read on a worker thread.

    event: cluster   {"now", "nodes": [{NodeView's fields, "cores": [{"id", "task_id"}]}], "queue_length", "cores_total",
                      "cores_used", "nodes_online", "finished_last_hour", "throughput": [[minute, finished]]}
    event: tasks     {"changed": [{"task_id", "state", "batch_id", "node", "name", "owner"}], "truncated"}
    event: task      a TaskView          (with ?task=ID)
    event: log       {"stream", "offset", "text"}   (with ?task=ID)
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hakuriver import protocol as p
from hakuriver.core.cluster import Cluster
from hakuriver.core.model import Task
from hakuriver.core.states import NodeState, TaskState
from hakuriver.host.convert import node_view

#: seconds: the fastest a change reaches the pages
TICK = 0.25
#: seconds: the longest between two snapshots while nothing changes
IDLE_TICK = 2.0
#: changed tasks named in one `tasks` event; beyond, "truncated" (a page then reloads its list)
CHANGED_SHOWN = 500
#: seconds between two checks that an open stream's token still works (--remove-user)
RECHECK = 5.0
#: seconds between two reads of a followed task's log while it runs
LOG_POLL = 0.5
#: bytes of a followed log sent at once
LOG_PIECE = 256 * 1024
#: a followed log starts this many bytes before its end: what the page keeps (it links to the whole file)
LOG_TAIL = 1024 * 1024
MINUTES = 60


class Live:
    def __init__(self, cluster: Cluster, view: Callable[[Task], p.TaskView], clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.view = view
        self.clock = clock
        self._watchers: set[asyncio.Queue[tuple[bytes, frozenset[str]]]] = set()
        self._changed: dict[str, Task] = {}
        self._dirty = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        #: tasks finished per minute (minute number -> count), the last hour, since the host started
        self._finished: dict[int, int] = {}

    # ---- fed by the service ------------------------------------------------------------------
    def committed(self, tasks: dict[str, Task]) -> None:
        """Tasks just written to disk: what the next tick tells the pages."""
        if not self._watchers and not any(t.state.is_final for t in tasks.values()):
            return
        for task in tasks.values():
            if task.state.is_final and task.finished_at is not None:
                minute = int(task.finished_at // 60)
                if minute not in self._finished and len(self._finished) >= 2 * MINUTES:
                    self._prune(minute)
                self._finished[minute] = self._finished.get(minute, 0) + 1
        if self._watchers:
            self._changed.update(tasks)
            self._dirty.set()

    # ---- served to the pages -----------------------------------------------------------------
    async def stream(self, follow: Callable[[], Task] | None, once: bool = False, logs: bool = False,
                     still_valid: Callable[[], bool] = lambda: True) -> AsyncIterator[bytes]:
        """One page's events, from a first snapshot on, until it disconnects (`once`: the first ones only).
        `follow`: the task whose record is sent as it changes, and with `logs` its stdout and stderr
        too (the caller checked the right to read them: its owner or an admin). The stream ends
        once `still_valid` says the caller's token no longer works (asked every RECHECK seconds)."""
        inbox: asyncio.Queue[tuple[bytes, frozenset[str]]] = asyncio.Queue(maxsize=4)
        self._watchers.add(inbox)
        self._ensure_ticker()
        follower = _LogFollower() if follow and logs else None
        checked = time.monotonic()
        try:
            yield _event("cluster", self.snapshot()) + b"retry: 2000\n\n"
            if follow is not None:
                yield await self._followed(follow, follower)
            while not once:
                # a followed log is read at least every LOG_POLL seconds, and at once while it has more
                wait = None if follower is None else 0.0 if follower.behind() else LOG_POLL
                try:
                    frame, changed = await asyncio.wait_for(inbox.get(), wait)
                except TimeoutError:
                    frame, changed = b"", frozenset()
                if follow is not None:
                    frame += await self._followed(follow, follower, changed)
                if time.monotonic() - checked > RECHECK:
                    if not still_valid():
                        return
                    checked = time.monotonic()
                if frame:
                    yield frame
        finally:
            self._watchers.discard(inbox)

    async def _followed(self, follow: Callable[[], Task], logs: _LogFollower | None,
                        changed: frozenset[str] | None = None) -> bytes:
        task = follow()
        out = b""
        if changed is None or task.task_id in changed:
            out += _event("task", p.encode(self.view(task)))
        if logs is not None and (changed is None or task.task_id in changed or not task.state.is_final or logs.behind()):
            for stream, offset, text in await asyncio.to_thread(logs.read, task):
                out += _event("log", json.dumps({"stream": stream, "offset": offset, "text": text}).encode())
        return out

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        while self._watchers:
            try:
                await asyncio.wait_for(self._dirty.wait(), IDLE_TICK)
            except TimeoutError:
                pass
            self._dirty.clear()
            changed, self._changed = self._changed, {}
            frame = _event("cluster", self.snapshot())
            if changed:
                frame += _event("tasks", _changes(changed))
            ids = frozenset(changed)
            for inbox in list(self._watchers):
                if inbox.full():  # a slow page: drop its oldest frame, it gets the newest snapshot
                    inbox.get_nowait()
                inbox.put_nowait((frame, ids))
            await asyncio.sleep(TICK)

    def snapshot(self) -> bytes:
        now = self.clock()
        nodes = [self._node(n) for n in sorted(self.cluster.nodes.values(), key=lambda n: n.name)]
        total = sum(n["total_cores"] for n in nodes)
        free = sum(n["free_cores"] for n in nodes if n["state"] == NodeState.ONLINE.value)
        online = [n for n in nodes if n["state"] == NodeState.ONLINE.value]
        minute = int(now // 60)
        self._prune(minute)
        throughput = [[(minute - i) * 60, self._finished.get(minute - i, 0)] for i in range(MINUTES - 1, -1, -1)]
        return json.dumps({
            "now": now, "nodes": nodes, "queue_length": len(self.cluster.queue), "cores_total": total,
            "cores_used": sum(n["total_cores"] - n["free_cores"] for n in online), "cores_free": free,
            "nodes_online": len(online), "finished_last_hour": sum(c for _, c in throughput), "throughput": throughput,
        }, separators=(",", ":")).encode()

    def _prune(self, minute: int) -> None:
        """Forget the minutes older than an hour before `minute`."""
        for old in [m for m in self._finished if m <= minute - MINUTES]:
            del self._finished[old]

    def _node(self, node: Any) -> dict[str, Any]:
        holder: dict[int, tuple[str, str]] = {}
        for task_id in node.task_ids:
            task = self.cluster.tasks.get(task_id)
            if task is not None:
                for core in task.core_ids:  # of a core with tasks queued behind it, the one running there
                    if core not in holder or task.state is TaskState.RUNNING:
                        holder[core] = (task_id, task.name)
        cores = [{"id": c, "task_id": holder.get(c, ("", ""))[0] or None, "name": holder.get(c, ("", ""))[1]}
                 for c in node.cores.all]
        view = node_view(node)  # what /api/nodes says of it, and its cores
        return {**{name: getattr(view, name) for name in p.NodeView._fields}, "cores": cores}


class _LogFollower:
    """Where a followed task's stdout and stderr were read up to (None: not yet; start near the end)."""

    def __init__(self) -> None:
        self.offsets: dict[str, int | None] = {"stdout": None, "stderr": None}
        self._sizes = {"stdout": 0, "stderr": 0}
        self._attempt = 0
        # a character cut in two by a piece's end is decoded whole with the next piece
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in self.offsets}

    def behind(self) -> bool:
        return any((self.offsets[s] or 0) < self._sizes[s] for s in self.offsets)

    def read(self, task: Task) -> list[tuple[str, int, str]]:
        """New bytes of each stream since the last read, LOG_PIECE at most (a worker thread's job)."""
        found = []
        if task.attempt != self._attempt:  # a new attempt writes its files afresh: start again
            self._attempt = task.attempt
            for stream, decoder in self._decoders.items():
                self.offsets[stream], self._sizes[stream] = None, 0
                decoder.reset()
        for stream, path in (("stdout", task.stdout_path), ("stderr", task.stderr_path)):
            if not path:
                continue
            try:
                with open(path, "rb") as fh:
                    self._sizes[stream] = os.fstat(fh.fileno()).st_size
                    start = self.offsets[stream]
                    if start is None:
                        start = max(0, self._sizes[stream] - LOG_TAIL)
                    elif self._sizes[stream] < start:  # the file was started afresh
                        start = 0
                        self._decoders[stream].reset()
                    fh.seek(start)
                    data = fh.read(LOG_PIECE)
            except OSError:
                continue
            if data:
                self.offsets[stream] = start + len(data)
                found.append((stream, start, self._decoders[stream].decode(data)))
        return found


def _changes(changed: dict[str, Task]) -> bytes:
    tasks = list(changed.values())[-CHANGED_SHOWN:]
    return json.dumps({"changed": [{"task_id": t.task_id, "state": t.state.value, "batch_id": t.batch_id,
                                    "node": t.node, "name": t.name, "owner": t.owner} for t in tasks],
                       "truncated": len(changed) > CHANGED_SHOWN}, separators=(",", ":")).encode()


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
