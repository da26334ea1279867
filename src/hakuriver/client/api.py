"""Talking to the host: one typed method per endpoint. Never prints, exits or parses argv."""

from __future__ import annotations


from hakuriver import protocol as p
from hakuriver.transport import ApiError, HostConnection, HostUnreachable

# annotations only: importing typing would cost the client ~3 ms of start-up
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["HostClient", "ApiError", "HostUnreachable"]


class HostClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.conn = HostConnection(url, timeout)

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
        return self._call("POST", p.TASKS, p.SubmitReply, p.SubmitRequest(tasks=specs, batch=batch),
                          idempotent=False)

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

    def nodes(self) -> list[p.NodeView]:
        return self._call("GET", p.NODES, list[p.NodeView])
