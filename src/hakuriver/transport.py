"""JSON over HTTP/1.1 keep-alive to the host, for the client and the runners.

Built on the standard library's http.client: it costs a fraction of an HTTP library's import
time, which the client's start-up budget needs. One HostConnection per thread.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any
from urllib.parse import urlsplit

import msgspec

from hakuriver import protocol as p


class HostUnreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the host at {url}: {reason}")
        self.url = url


class ApiError(Exception):
    """The host answered with an error: its one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HostConnection:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, method: str, path: str, body: Any = None, reply: Any = None, timeout: float | None = None,
             idempotent: bool = True) -> Any:
        """Send `body` (a protocol message), decode the answer as `reply`.

        An idempotent request is resent once when a kept-alive connection turns out closed; a
        submission is not, since the host may have committed it before the connection broke.
        """
        data = msgspec.json.encode(body) if body is not None else None
        while True:
            reused = self._conn is not None
            try:
                status, raw = self._roundtrip(method, path, data, timeout)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # A kept-alive connection the host closed meanwhile: the request never arrived.
                self.close()
                if not (reused and idempotent):
                    raise HostUnreachable(self.url, _reason(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise HostUnreachable(self.url, _reason(exc)) from None
        if status >= 400:
            raise ApiError(status, _error_message(raw, status))
        if reply is None:
            return None
        try:
            return msgspec.json.decode(raw, type=reply)
        except msgspec.DecodeError as exc:
            raise ApiError(status, f"unexpected answer from the host at {self.url}: {exc}") from None

    def _roundtrip(self, method: str, path: str, data: bytes | None, timeout: float | None) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        self._conn.timeout = timeout or self.timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(self._conn.timeout)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self._conn.request(method, path, body=data, headers=headers)
        resp = self._conn.getresponse()
        return resp.status, resp.read()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is hakuriver.host running there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _error_message(raw: bytes, status: int) -> str:
    try:
        return msgspec.json.decode(raw, type=p.ErrorReply).error
    except msgspec.DecodeError:
        return f"the host answered HTTP {status}"
