"""The keeper's side of its one runner connection: non-blocking, newline-delimited messages.

The keeper's loop owns the selector; this class registers the listener or the connection on it,
never both: one runner at a time, and the next is accepted once this one is gone and fully read.
What handling the messages of one read causes goes out in one write, after them.
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable

import msgspec

from hakuriver.runner.keeper_wire import RECV_SIZE, ToKeeper, encode_lines

log = logging.getLogger("hakuriver.keeper")
_to_keeper = msgspec.json.Decoder(ToKeeper).decode


class RunnerConn:
    def __init__(self, sel: selectors.BaseSelector, handle: Callable[[msgspec.Struct], None],
                 greeting: Callable[[], list[msgspec.Struct]]) -> None:
        self.sel = sel
        self._handle, self._greeting = handle, greeting
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self._inbox = b""
        self._outbox = bytearray()
        #: while the messages of one read are handled: what they cause goes out in one write, after
        self._batching = False

    def listen(self, listener: socket.socket) -> None:
        """Accept runners on this socket from now on (until then, `send` keeps nothing)."""
        self.listener = listener
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, self._accept)

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def send(self, messages: list[msgspec.Struct]) -> None:
        if self.conn is None:
            return  # the keeper keeps what matters (its exits, in memory and in its log) for the next runner
        self._outbox += encode_lines(messages)
        if not self._batching:
            self._flush()

    def _accept(self, _mask: int) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.conn, self._inbox, self._outbox = conn, b"", bytearray()
        self.sel.unregister(self.listener)
        self.sel.register(conn, selectors.EVENT_READ, self._on_conn)
        self.send(self._greeting())

    def _on_conn(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if not mask & selectors.EVENT_READ or self.conn is None:
            return
        try:
            data = self.conn.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop()
            return
        lines = (self._inbox + data).split(b"\n")
        self._inbox = lines.pop()
        self._batching = True
        for line in lines:
            try:
                self._handle(_to_keeper(line))
            except msgspec.DecodeError:
                log.warning("ignoring a malformed message from the runner")
            except Exception:  # the keeper parents every task of the node: it must not die of one message
                log.exception("could not handle a message from the runner")
        self._batching = False
        if self._outbox and self.conn is not None:
            self._flush()

    def _drop(self) -> None:
        if self.conn is None:
            return
        self.sel.unregister(self.conn)
        self.conn.close()
        self.conn = None
        if self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, self._accept)

    def _flush(self) -> None:
        assert self.conn is not None
        try:
            sent = self.conn.send(self._outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop()
            return
        del self._outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbox else 0)
        if events != self.sel.get_key(self.conn).events:  # usually all is sent: no epoll call then
            self.sel.modify(self.conn, events, self._on_conn)
