"""`hakuriver.host`: open the database, restore the queue, serve the API; or manage its users."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys

from hakuriver.cli_common import OneLineParser, add_config_flag, config_or_exit, fail
from hakuriver.config import Config
from hakuriver.core import ahead
from hakuriver.core.cluster import Cluster
from hakuriver.credentials import CredentialError
from hakuriver.host.auth import first_start
from hakuriver.host.store import Store, StoreError, StoreWriteError

PROG = "hakuriver.host"
log = logging.getLogger("hakuriver.host")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog=PROG, description="HakuRiver host: queue, scheduler, records, API.")
    add_config_flag(parser)
    users = parser.add_mutually_exclusive_group()
    users.add_argument("--add-user", metavar="NAME", help="make a user and print their token (shown once)")
    users.add_argument("--list-users", action="store_true", help="list the users and whether each is an admin")
    users.add_argument("--remove-user", metavar="NAME", help="remove a user: their token stops working at once")
    users.add_argument("--print-systemd-unit", action="store_true",
                       help="print a systemd unit that starts this host with this --config, and exit")
    parser.add_argument("--admin", action="store_true", help="with --add-user: the user may kill, read and retry "
                        "every task, not only their own")
    args = parser.parse_args(argv)
    if args.admin and args.add_user is None:
        fail(PROG, "--admin goes with --add-user NAME", 2)
    config = config_or_exit(PROG, args.config)
    if args.print_systemd_unit:
        from hakuriver.systemd import unit

        print(unit("host", args.config), end="")
        return
    managing = args.add_user is not None or args.list_users or args.remove_user is not None
    ssl = {} if managing else _tls_options(config)  # before anything is made: a bad setting changes nothing
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("uvicorn.error").addFilter(_long_polls_cut_short)
    try:
        store = Store(config.database.db_file)
    except StoreError as exc:
        fail(PROG, str(exc))
    try:
        if managing:
            _manage_users(args, store)
            return
        try:
            cluster_key = first_start(config.auth, store)
        except (CredentialError, OSError, StoreWriteError) as exc:
            fail(PROG, f"cannot set up the host's credentials: {exc} (check [auth] in the config)")
        sock = _bind(config)
        try:
            _event_loop_policy()
            asyncio.run(_serve(config, store, sock, cluster_key, ssl))
        except KeyboardInterrupt:
            pass
    finally:
        store.close()


def _long_polls_cut_short(record: logging.LogRecord) -> bool:
    """On stop, uvicorn logs the requests still open after the grace second as an ERROR; here they
    are the long-polls of waiting runners and `--wait` clients, which simply ask the next host."""
    if record.levelno >= logging.ERROR and "timeout graceful shutdown exceeded" in record.getMessage():
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "stopping: open long-polls (waiting runners and clients) cut short; they ask again", ()
    return True


def _manage_users(args: argparse.Namespace, store: Store) -> None:
    from hakuriver.host import users

    try:
        if args.add_user is not None:
            token = users.add_user(store, args.add_user, args.admin)
            print(token)
            print(f"user {args.add_user}{' (admin)' if args.admin else ''} added; the token above is shown only once: "
                  "give it to them for HAKURIVER_TOKEN or their [auth] token_file", file=sys.stderr)
        elif args.remove_user is not None:
            users.remove_user(store, args.remove_user)
            print(f"user {args.remove_user} removed; their token no longer works", file=sys.stderr)
        else:
            users.print_users(store)
    except (users.UserError, StoreWriteError) as exc:
        fail(PROG, str(exc))


def _tls_options(config: Config) -> dict[str, str]:
    """uvicorn's HTTPS settings, checked here so that a wrong path is one line, not a traceback."""
    net = config.network
    if not (net.tls_cert_file or net.tls_key_file):
        return {}
    if not (net.tls_cert_file and net.tls_key_file):
        fail(PROG, "[network] tls_cert_file and tls_key_file go together: set both to serve HTTPS, or neither", 2)
    import ssl

    for key, path in (("tls_cert_file", net.tls_cert_file), ("tls_key_file", net.tls_key_file)):
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            fail(PROG, f"[network] {key} {path} is not a readable file", 2)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(net.tls_cert_file, net.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        why = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else \
            "they are not a PEM certificate and its private key"
        fail(PROG, f"cannot load the TLS certificate {net.tls_cert_file} with the key {net.tls_key_file}: {why} "
                   "(check [network] tls_cert_file and tls_key_file)", 2)
    return {"ssl_certfile": net.tls_cert_file, "ssl_keyfile": net.tls_key_file}


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


async def _serve(config: Config, store: Store, sock: socket.socket, cluster_key: str, ssl: dict[str, str]) -> None:
    import uvicorn  # imported here so that a config error is reported without loading the server

    from hakuriver.host.app import build_app
    from hakuriver.host.auth import Authenticator
    from hakuriver.host.service import HostService

    service = HostService(Cluster(config.timing.heartbeat_timeout, ahead.wait_limit(config.timing.heartbeat_interval,
                                                                           config.timing.heartbeat_timeout_factor)), store,
                          default_time_limit=config.tasks.default_time_limit_seconds)
    service.restore()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(service, Authenticator(store, cluster_key, config.auth.metrics_public), secure_cookie=bool(ssl)),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=75,
            loop="none",
            http=_coalescing_http_protocol(),
            **ssl,
        )
    )
    # what start-up made (modules, the app, the restored records) stays for the host's life: kept
    # out of the collector's full passes, which otherwise walk all of it every few batches (~12 ms);
    # start-up's own garbage is collected first, or it would stay too
    gc.collect()
    gc.freeze()
    watcher = asyncio.create_task(service.watch_heartbeats(config.timing.cleanup_check_interval))
    service.request_schedule()
    log.info("listening on %s:%d (%s), database %s", config.network.host_bind_ip, config.network.host_port,
             "HTTPS" if ssl else "plain HTTP", config.database.db_file)
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
