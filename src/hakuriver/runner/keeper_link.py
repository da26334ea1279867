"""The runner's side of its link to the node's keeper: reaching it, starting it when there is none.

Apart from keeper.py so that the keeper process (`python -m hakuriver.runner.keeper`), which
parents every task of the node and outlives the runner, loads none of it; what both sides speak
is in keeper_wire.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time

import msgspec

from hakuriver.runner.keeper_wire import RECV_SIZE, Began, Exit, FromKeeper, Hello, State, encode_lines, socket_address

log = logging.getLogger("hakuriver.keeper")

#: the keeper's output (its log), in the runner's state folder
LOG_NAME = "keeper.log"
_from_keeper = msgspec.json.Decoder(FromKeeper).decode


class KeeperGone(Exception):
    """The keeper could not be started or reached, or its connection broke."""


class KeeperLink:
    """The runner's connection to its keeper; starts the keeper when there is none."""

    def __init__(self, state_dir: str, start_timeout: float = 15.0) -> None:
        self.state_dir = state_dir
        self._address = socket_address(state_dir)
        self.start_timeout = start_timeout
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._buf = b""
        self._proc: subprocess.Popen | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def connect(self, env: dict[str, str], attempts: int = 3) -> State:
        """Connect (starting the keeper if needed), say Hello, and return the keeper's State.

        A keeper may be on its way out (idle) just as a runner connects: then a new one is
        started, a few times at most.
        """
        attempt = 1
        while True:
            self.close()
            sock = self._open() or self._start_and_open()
            self._sock, self._buf = sock, b""
            try:
                return self._handshake(env)
            except KeeperGone:
                if attempt == attempts:
                    raise
            attempt += 1
            time.sleep(0.1)

    def _handshake(self, env: dict[str, str]) -> State:
        self.send([Hello(env)])
        while True:  # the keeper's first message is its State
            for msg in self._read():
                if isinstance(msg, State):
                    return msg

    def send(self, messages: list[msgspec.Struct]) -> None:
        sock = self._sock
        if sock is None or not messages:
            if messages:
                raise KeeperGone("not connected to the keeper")
            return
        data = encode_lines(messages)
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as exc:
                raise KeeperGone(f"lost the keeper: {exc.strerror or exc}") from exc

    def wake(self) -> None:
        """Make a `poll` in progress on another thread return now."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"w")

    def poll(self, timeout: float) -> list[Exit | Began]:
        """The exits and starts the keeper sent, in its order, waiting up to `timeout` for some (or for `wake`)."""
        sock = self._sock
        if sock is None:
            raise KeeperGone("not connected to the keeper")
        readable, _, _ = select.select([sock, self._wake_r], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if sock not in readable:
            return []
        return [m for m in self._read() if isinstance(m, (Exit, Began))]

    def _read(self) -> list[msgspec.Struct]:
        """The messages completed by one read (possibly none: a line can arrive in parts)."""
        sock = self._sock
        if sock is None:
            raise KeeperGone("not connected to the keeper")
        try:
            data = sock.recv(RECV_SIZE)
        except OSError as exc:
            raise KeeperGone(f"lost the keeper: {exc.strerror or exc}") from exc
        if not data:
            raise KeeperGone("the keeper closed the connection")
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        messages = []
        for line in lines:
            try:
                messages.append(_from_keeper(line))
            except msgspec.DecodeError:
                log.warning("ignoring a malformed message from the keeper")
        return messages

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None

    def _open(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self._address)
        except OSError:
            sock.close()
            return None
        return sock

    def _start_and_open(self) -> socket.socket:
        log_path = os.path.join(self.state_dir, LOG_NAME)
        deadline = time.monotonic() + self.start_timeout
        proc = self._start(log_path)
        while time.monotonic() < deadline:
            sock = self._open()
            if sock is not None:
                return sock
            code = proc.poll()
            if code == 0:  # an old keeper still held the lock, on its way out: start another
                proc = self._start(log_path)
            elif code is not None:
                break
            time.sleep(0.02)
        raise KeeperGone(f"the task keeper did not start; see {log_path}")

    def _start(self, log_path: str) -> subprocess.Popen:
        if self._proc is not None:
            self._proc.poll()  # reap an earlier keeper of ours
        with open(log_path, "ab") as log_fh:
            self._proc = subprocess.Popen([sys.executable, "-m", "hakuriver.runner.keeper", self.state_dir],
                                          stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                          start_new_session=True, close_fds=True, cwd="/")
        return self._proc
