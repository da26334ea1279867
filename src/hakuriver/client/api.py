"""Talking to the host: one typed method per endpoint. Never prints, exits or parses argv."""

from __future__ import annotations


from hakuriver import protocol as p
from hakuriver.transport import ApiError, HostConnection, HostUnreachable

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["HostClient", "ApiError", "HostUnreachable"]


class HostClient:
    def __init__(self, url: str, timeout: float = 30.0, token: str = "", ca_file: str = "") -> None:
        self.conn = HostConnection(url, timeout, token, ca_file)

    @property
    def url(self) -> str:
        return self.conn.url

    def _call(self, method: str, path: str, reply: Any, body: Any = None, **kw: Any) -> Any:
        raw = self.conn.call(method, path, p.dumps(body) if body is not None else b"", **kw)
        try:
            return p.loads(raw, reply)
        except p.DecodeError as exc:
            raise ApiError(200, f"unexpected answer from the host at {self.url}: {exc}") from None

    def submit(self, specs: list[p.TaskSpec], batch: bool = False) -> p.SubmitReply:
        """The tasks are owned by the user whose token this client presents."""
        return self._call("POST", p.TASKS, p.SubmitReply, p.SubmitRequest(tasks=specs, batch=batch), idempotent=False)

    def list_tasks(self, filters: dict[str, str], limit: int, offset: int = 0) -> p.TaskList:
        """One page of tasks, newest first; `filters` are the query parameters of p.TASKS (state, node, ...)."""
        query = _query({**filters, "limit": str(limit), "offset": str(offset)})
        return self._call("GET", f"{p.TASKS}?{query}", p.TaskList)

    def logs(self, task_id: str, stream: str, offset: int = 0, tail: int = 0,
             wait: float = 0.0) -> tuple[int, str, Iterator[bytes]]:
        """(start offset, task state, the bytes as they arrive) of a task's stdout or stderr."""
        query = _query({"stream": stream, "offset": str(offset), "tail": str(tail), "wait": f"{wait:g}"})
        headers, pieces = self.conn.stream(f"{p.TASK_LOGS.format(task_id=task_id)}?{query}", timeout=wait + 30)
        start = int(headers.get(p.LOG_OFFSET_HEADER.encode(), b"0"))
        return start, headers.get(p.LOG_STATE_HEADER.encode(), b"").decode(), pieces

    def task(self, task_id: str) -> p.TaskView:
        return self._call("GET", p.TASK.format(task_id=task_id), p.TaskView)

    def wait(self, task_id: str, timeout: float) -> p.TaskView:
        """The task once final, or as it is after `timeout` seconds (long-poll: no busy polling)."""
        path = p.TASK_WAIT.format(task_id=task_id) + f"?timeout={timeout:g}"
        return self._call("GET", path, p.TaskView, timeout=timeout + 15)

    def kill(self, task_id: str) -> p.KillReply:
        return self._call("POST", p.TASK_KILL.format(task_id=task_id), p.KillReply)

    def batch(self, batch_id: str) -> p.BatchView:
        return self._call("GET", p.BATCH.format(batch_id=batch_id), p.BatchView)

    def batch_tasks(self, batch_id: str) -> list[p.TaskView]:
        return self._call("GET", p.BATCH_TASKS.format(batch_id=batch_id), list[p.TaskView])

    def wait_batch(self, batch_id: str, timeout: float) -> p.BatchView:
        path = p.BATCH_WAIT.format(batch_id=batch_id) + f"?timeout={timeout:g}"
        return self._call("GET", path, p.BatchView, timeout=timeout + 15)

    def kill_batch(self, batch_id: str) -> p.KillReply:
        return self._call("POST", p.BATCH_KILL.format(batch_id=batch_id), p.KillReply)

    def retry_failed(self, some_id: str) -> p.SubmitReply:
        """Resubmit what did not complete of a task or of a batch (the host looks for either)."""
        return self._call("POST", p.TASK_RETRY.format(task_id=some_id), p.SubmitReply, idempotent=False)

    def nodes(self) -> list[p.NodeView]:
        return self._call("GET", p.NODES, list[p.NodeView])


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _quote(text: str) -> str:
    """Percent-encoding (urllib.parse would add 6 ms of start-up for this one function)."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in text.encode())


def _query(params: dict[str, str]) -> str:
    return "&".join(f"{k}={_quote(v)}" for k, v in params.items() if v)
