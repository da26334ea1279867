"""The routes of the dashboard and of monitoring: the page and its files, logging in with a
token (kept in an HttpOnly, SameSite=Strict cookie), the live events, and Prometheus metrics.

The page's files ship inside the package (`host/dashboard/`), so installing needs no Node.js.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hakuriver import protocol as p
from hakuriver.host import routes
from hakuriver.host.auth import Authenticator, Unauthorized
from hakuriver.host.http import BadRequest, read_body
from hakuriver.host.metrics import CONTENT_TYPE
from hakuriver.host.service import HostService, NotFound

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8",
          ".png": "image/png"}
#: a year: every file is fetched under a name that changes with the release (see `page`)
_ASSET_CACHE = "public, max-age=31536000, immutable"
#: the page and its files: scripts and styles from this host only, no inline code, no framing
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}

Handler = Callable[[Request], Awaitable[Response]]


class Web:
    def __init__(self, service: HostService, auth: Authenticator, secure_cookie: bool = False) -> None:
        self.service = service
        self.auth = auth
        self.secure_cookie = secure_cookie
        self._page: bytes | None = None

    def handlers(self) -> dict[tuple[str, str], Handler]:
        return {("GET", p.EVENTS): self.events, ("POST", p.LOGIN): self.login, ("POST", p.LOGOUT): self.logout,
                ("GET", p.ME): self.me, ("GET", p.METRICS): self.metrics, ("GET", p.DASHBOARD): self.page,
                ("GET", p.ASSET): self.asset}

    async def page(self, request: Request) -> Response:
        if self._page is None:
            from hakuriver import __version__

            with open(os.path.join(ASSETS, "index.html"), "rb") as fh:
                # the files' URLs carry the release, so a browser never mixes an old script with a new page
                self._page = fh.read().replace(b"{{version}}", __version__.encode())
        return Response(self._page, media_type="text/html; charset=utf-8",
                        headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        ext = os.path.splitext(name)[1]
        path = os.path.join(ASSETS, name)
        if "/" in name or name.startswith(".") or ext not in _TYPES or not os.path.isfile(path):
            raise NotFound("dashboard file", name)
        data = await asyncio.to_thread(_read, path)
        return Response(data, media_type=_TYPES[ext], headers={**_SECURITY_HEADERS, "Cache-Control": _ASSET_CACHE})

    async def login(self, request: Request) -> Response:
        body = await read_body(request, p.LoginRequest)
        who = self.auth.identify(f"Bearer {body.token}")
        if who.runner:
            raise Unauthorized("the cluster key is for runners: log in with a user's token")
        response = Response(p.encode(p.Me(who.name, who.admin)), media_type="application/json")
        response.set_cookie(p.TOKEN_COOKIE, body.token.strip(), httponly=True, samesite="strict",
                            secure=self.secure_cookie, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        response = Response(b'{"ok":true}', media_type="application/json")
        response.delete_cookie(p.TOKEN_COOKIE, path="/", httponly=True, samesite="strict", secure=self.secure_cookie)
        return response

    async def me(self, request: Request) -> Response:
        who = request.state.identity
        return Response(p.encode(p.Me(who.name, who.admin)), media_type="application/json")

    async def events(self, request: Request) -> Response:
        follow, logs = None, False
        some_id = request.query_params.get("task")
        if request.query_params.get("once", "false") not in ("true", "false"):
            raise BadRequest("query parameter once must be true or false")
        if some_id is not None:
            if not p.is_id_or_prefix(some_id):
                raise BadRequest(f"malformed task ID {some_id!r}")
            task = self.service.get_task(self.service.resolve_task(some_id))
            task_id, who = task.task_id, request.state.identity
            logs = who.admin or (bool(task.owner) and task.owner == who.name)  # as GET .../logs: owner or admin

            def follow():  # noqa: ANN202 - the followed task as it is now
                return self.service.get_task(task_id)

        once = request.query_params.get("once") == "true"
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        credential = request.headers.get("authorization") or f"Bearer {request.cookies.get(p.TOKEN_COOKIE, '')}"

        def still_valid() -> bool:  # a user removed while their page is open is cut off, as everywhere
            try:
                self.auth.identify(credential)
            except Unauthorized:
                return False
            return True

        stream = self.service.live.stream(follow, once, logs, still_valid)
        return StreamingResponse(stream, media_type=routes.EVENT_STREAM, headers=headers)

    async def metrics(self, request: Request) -> Response:
        metrics = self.service.metrics
        text = await asyncio.to_thread(metrics.render, metrics.sample())
        return Response(text, media_type=CONTENT_TYPE)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
