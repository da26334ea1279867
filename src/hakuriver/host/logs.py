"""Serving a task's output files through the host: ranges, tails, following. Never a whole file in memory.

Every file operation runs on a worker thread (a log on shared storage can be slow to reach),
so the event loop keeps answering heartbeats while gigabytes stream out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

from hakuriver.core.states import TaskState

#: bytes per read and per piece of the reply
CHUNK = 1024 * 1024
#: how often a follower looks for new output, seconds
POLL = 0.25


class LogUnavailable(Exception):
    """The host cannot read the file; the message says which and why."""


def _size(path: str, final: bool) -> int:
    """The file's size; a file not there yet is empty, unless the task has ended (then it is gone)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        if not final:
            return 0
        raise LogUnavailable(
            f"the host cannot find {path}: it was removed, or the host does not see the shared folder there"
        ) from None
    except OSError as exc:
        raise LogUnavailable(f"the host cannot read {path}: {exc.strerror}") from None


def _tail_start(path: str, lines: int, end: int) -> int:
    """The offset of the last `lines` lines before `end` (the newline that ends the file ends its last line)."""
    if lines <= 0 or end == 0:
        return end
    seen = 0
    with open(path, "rb") as fh:
        fh.seek(end - 1)
        pos = end - 1 if fh.read(1) == b"\n" else end
        while pos > 0:
            step = min(CHUNK, pos)
            fh.seek(pos - step)
            block = fh.read(step)
            i = len(block)
            while (i := block.rfind(b"\n", 0, i)) >= 0:
                seen += 1
                if seen == lines:
                    return pos - step + i + 1
            pos -= step
    return 0


def _read(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


async def locate(
    probe: Callable[[], tuple[str, TaskState]], offset: int, tail: int, wait: float
) -> tuple[str, TaskState, int, int]:
    """(path, state, start, end): the file and byte range to send, and the task's state before its size was read.

    `probe` gives the task's log path ("" before it starts) and state. With `wait`, hold on up
    to that many seconds for output past `offset`, or for the task's end (lost counts: its node
    is unreachable). The state is read before the size: once it is final, the range reaches
    the end of the log.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        path, state = probe()
        end = await asyncio.to_thread(_size, path, state.is_final) if path else 0
        start = offset
        if tail and end:
            start = max(offset, await asyncio.to_thread(_tail_start, path, tail, end))
        if end > start or state.is_final or loop.time() >= deadline:
            return path, state, min(start, end), end
        await asyncio.sleep(POLL)


async def stream(path: str, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes of `path` from `start` to `end`, a CHUNK at a time."""
    pos = start
    while pos < end:
        try:
            data = await asyncio.to_thread(_read, path, pos, min(CHUNK, end - pos))
        except OSError:
            return  # the file went away mid-stream: the reply ends short, its offset header says where
        if not data:
            return
        pos += len(data)
        yield data
