"""JSON over HTTP/1.1 keep-alive to the host, for the client and the runners.

A deliberately small HTTP client on a plain socket: the host speaks plain HTTP/1.1 with
Content-Length bodies, and this is all that needs. It imports in a millisecond (http.client
pulls in the email package, about 16 ms, which the client's start-up budget cannot afford) and
costs a fraction of http.client's header parsing on the runners' hot path. One HostConnection
per thread.

Every request carries the caller's credential (a user's token, or a runner's cluster key) as a
bearer token. For an https:// URL the socket is wrapped in TLS, verified against `ca_file` (or
the system's CAs); `ssl` is imported only then, as it costs the client ~10 ms of start-up.
"""

from __future__ import annotations

import json
import socket

# annotations only: importing typing would cost the client start-up time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

_MAX_HEADER = 64 * 1024


class HostUnreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the host at {url}: {reason}")
        self.url = url


class ApiError(Exception):
    """The host answered with an error: its one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Closed(Exception):
    """The host closed the connection before answering."""


class HostConnection:
    def __init__(self, url: str, timeout: float = 30.0, token: str = "", ca_file: str = "") -> None:
        self.url = url.rstrip("/")
        self._tls = self.url.startswith("https://")
        self._host, self._port = _host_and_port(self.url)
        self._host_header = f"{self._host}:{self._port}".encode()
        self.timeout = timeout
        self.ca_file = ca_file
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ssl_context = None
        self._answered = False
        self.token = token

    @property
    def token(self) -> str:
        return self._token

    @token.setter
    def token(self, token: str) -> None:
        """The bearer token of the next requests (a runner re-reads its key when the host refuses it)."""
        self._token = token
        self._auth_header = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def call(self, method: str, path: str, data: bytes = b"", timeout: float | None = None,
             idempotent: bool = True) -> bytes:
        """Send an encoded message, return the body of a successful answer (codecs: protocol.py).

        An idempotent request is resent once when a kept-alive connection turns out closed; a
        submission is not, since the host may have committed it before the connection broke.
        """
        while True:
            reused = self._sock is not None
            try:
                status, raw = self._roundtrip(method, path, data, timeout or self.timeout)
                break
            except (_Closed, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if not (reused and idempotent):
                    raise HostUnreachable(self.url, _reason(exc)) from None
            except (OSError, ValueError) as exc:  # ValueError: a malformed length or chunk size
                self.close()
                raise HostUnreachable(self.url, _reason(exc)) from None
        if status >= 400:
            raise ApiError(status, _error_message(raw, status))
        return raw

    def stream(self, path: str, timeout: float | None = None) -> tuple[dict[bytes, bytes], Iterator[bytes]]:
        """GET a body piece by piece (e.g. a log of gigabytes): its headers, and its pieces as they come.

        Read the pieces to the end before the next call on this connection.
        """
        try:
            status, headers = self._send_and_read_head("GET", path, b"", timeout or self.timeout)
            if status >= 400:
                raise ApiError(status, _error_message(self._read_body(headers), status))
        except (OSError, _Closed, ValueError) as exc:
            self.close()
            raise HostUnreachable(self.url, _reason(exc)) from None
        return headers, self._pieces(headers)

    def _pieces(self, headers: dict[bytes, bytes]) -> Iterator[bytes]:
        try:
            yield from self._body_pieces(headers)
        except (OSError, _Closed, ValueError) as exc:  # ValueError: a malformed chunk size
            self.close()
            raise HostUnreachable(self.url, _reason(exc)) from None
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()

    def _body_pieces(self, headers: dict[bytes, bytes]) -> Iterator[bytes]:
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while size := int(self._read_line().split(b";")[0], 16):
                yield from self._next_bytes(size)
                self._read_line()
            self._read_line()
        else:
            yield from self._next_bytes(int(headers.get(b"content-length", b"0")))

    def _next_bytes(self, n: int) -> Iterator[bytes]:
        """The next `n` bytes, in pieces as they arrive (joined, a big body is copied once)."""
        while n > 0:
            if not self._buf:
                self._fill()
            piece, self._buf = self._buf[:n], self._buf[n:]
            n -= len(piece)
            yield piece

    def _send_and_read_head(self, method: str, path: str, data: bytes, timeout: float) -> tuple[int, dict[bytes, bytes]]:
        if self._sock is None:
            self._sock = self._connect(timeout)
            self._answered = False
        if self._sock.gettimeout() != timeout:  # each settimeout is a system call
            self._sock.settimeout(timeout)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
            method.encode(), path.encode(), self._host_header, self._auth_header, len(data))
        self._sock.sendall(head + data)
        return self._read_head()

    def _connect(self, timeout: float) -> socket.socket:
        # an ASCII name goes to getaddrinfo as bytes: a str would load the IDNA codec (~1 ms of start-up)
        host = self._host.encode() if self._host.isascii() else self._host
        sock = socket.create_connection((host, self._port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._tls:
            return sock
        if self._ssl_context is None:
            import ssl

            self._ssl_context = ssl.create_default_context(cafile=self.ca_file or None)
        try:
            return self._ssl_context.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise

    def _roundtrip(self, method: str, path: str, data: bytes, timeout: float) -> tuple[int, bytes]:
        status, headers = self._send_and_read_head(method, path, data, timeout)
        body = self._read_body(headers)
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body

    def _read_body(self, headers: dict[bytes, bytes]) -> bytes:
        return b"".join(self._body_pieces(headers))

    def _read_head(self) -> tuple[int, dict[bytes, bytes]]:
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > _MAX_HEADER:
                raise OSError("the host sent an oversized HTTP header")
            self._fill()
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        self._answered = True
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise OSError(f"not an HTTP answer: {status_line[:60]!r}")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            if not self._answered and not self._tls:  # what a TLS server does to a plain request
                raise _Closed("connection closed by the host before it answered "
                              "(if it serves HTTPS, set [network] tls_ca_file to its CA certificate)")
            raise _Closed("connection closed by the host")
        self._buf += chunk

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line


def _host_and_port(url: str) -> tuple[str, int]:
    """'http://10.0.0.1:8000' -> ('10.0.0.1', 8000); '[::1]' for IPv6."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    default = 443 if url.startswith("https://") else 80
    return host or "127.0.0.1", int(port) if port.isdigit() else default


#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH
_X509_HOSTNAME_MISMATCH = 62


def _reason(exc: BaseException) -> str:
    kind = type(exc).__name__
    if kind == "SSLCertVerificationError":  # by name: ssl is not imported for plain HTTP
        why = getattr(exc, "verify_message", "") or exc
        if getattr(exc, "verify_code", 0) == _X509_HOSTNAME_MISMATCH:
            return (f"the host's TLS certificate is for another name ({why}): set [network] host_reachable_address "
                    "to a name the certificate holds, or have it reissued for this one")
        return f"cannot verify the host's TLS certificate ({why}): set [network] tls_ca_file to the CA certificate that signed it"
    if getattr(exc, "reason", None) == "WRONG_VERSION_NUMBER":
        return ("the host does not speak HTTPS: drop tls_ca_file and tls_cert_file from this config's [network], "
                "or set tls_cert_file and tls_key_file in the host's")
    if kind.startswith("SSL"):
        return f"TLS failed ({getattr(exc, 'reason', None) or exc}); check [network] tls_ca_file and the host's certificate"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is hakuriver.host running there?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _error_message(raw: bytes, status: int) -> str:
    """The `error` of the host's ErrorReply, or a plain description of the status."""
    try:
        message = json.loads(raw)["error"]
        if isinstance(message, str) and message:
            return message
    except (ValueError, TypeError, KeyError):
        pass
    return f"the host answered HTTP {status}"
