"""`hakuriver.host`: open the database, restore the queue, serve the API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from hakuriver.cli_common import add_config_flag, config_or_exit, fail
from hakuriver.config import Config
from hakuriver.core.cluster import Cluster
from hakuriver.host.store import Store, StoreError

PROG = "hakuriver.host"
log = logging.getLogger("hakuriver.host")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="HakuRiver host: queue, scheduler, records, API.")
    add_config_flag(parser)
    args = parser.parse_args(argv)
    config = config_or_exit(PROG, args.config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        store = Store(config.database.db_file)
    except StoreError as exc:
        fail(PROG, str(exc))
    sock = _bind(config)
    try:
        _event_loop_policy()
        asyncio.run(_serve(config, store, sock))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


def _event_loop_policy() -> None:
    """uvloop where it is installed: the same asyncio API with less overhead per request."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _bind(config: Config) -> socket.socket:
    ip, port = config.network.host_bind_ip, config.network.host_port
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted connections: small replies go out at once (no Nagle/delayed-ACK stall)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((ip, port))
    except OSError as exc:
        fail(PROG, f"cannot listen on {ip}:{port}: {exc.strerror} (is another host running? change [network] host_port)")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve(config: Config, store: Store, sock: socket.socket) -> None:
    import uvicorn  # imported here so that a config error is reported without loading the server

    from hakuriver.host.app import build_app
    from hakuriver.host.service import HostService

    service = HostService(Cluster(config.timing.heartbeat_timeout), store,
                          default_time_limit=config.tasks.default_time_limit_seconds)
    service.restore()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(service),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=75,
            loop="none",
            http=_coalescing_http_protocol(),
        )
    )
    watcher = asyncio.create_task(service.watch_heartbeats(config.timing.cleanup_check_interval))
    service.request_schedule()
    log.info("listening on %s:%d, database %s", config.network.host_bind_ip, config.network.host_port, config.database.db_file)
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()


def _coalescing_http_protocol() -> type:
    """uvicorn's httptools protocol, writing each response in one piece.

    uvicorn writes a response's head and its body separately: with TCP_NODELAY, two segments
    and two wake-ups of the reader per response, which on the runners' hot path cost more
    than the rest of the request. Writes made in one step of the event loop are joined here
    and go out together at the end of that step.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class CoalescingTransport:
        def __init__(self, transport: asyncio.Transport) -> None:
            self._transport = transport
            self._pending: list[bytes] = []
            self._loop = asyncio.get_running_loop()

        def write(self, data: bytes) -> None:
            if not self._pending:
                self._loop.call_soon(self._flush)
            self._pending.append(bytes(data))

        def _flush(self) -> None:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

        def close(self) -> None:
            self._flush()  # a response written just before closing still goes out
            self._transport.close()

        def __getattr__(self, name: str):  # noqa: ANN204 - everything else is the real transport's
            return getattr(self._transport, name)

    class CoalescingHttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]

    return CoalescingHttpProtocol


if __name__ == "__main__":
    main()
