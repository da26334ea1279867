"""HTTP concerns only: decode protocol messages, bound body sizes, map errors to status codes.

Each route is a few lines that call the service. Any body that is not a valid message gets a
400 with one line saying what is wrong; the host never dies on a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hakuriver import protocol as p
from hakuriver.core.cluster import NodeTaken, SubmitRefused
from hakuriver.core.model import Task
from hakuriver.core.states import TaskState
from hakuriver.host import logs, routes
from hakuriver.host.http import BadRequest, error_response, json_response, read_body
from hakuriver.host.auth import Authenticator, Forbidden, Identity, Unauthorized, allowed, check_owner
from hakuriver.host.convert import node_view, task_view
from hakuriver.host.service import SCAN_PAGE, AmbiguousId, HostService, KillRefused, NotFound
from hakuriver.host.store import StoreWriteError, TaskFilter
from hakuriver.host.web import Web

log = logging.getLogger("hakuriver.host")


def _id(request: Request, name: str = "task_id") -> str:
    some_id = request.path_params[name]
    if not p.is_id_or_prefix(some_id):
        raise BadRequest(
            f"malformed ID {some_id!r}: expected a UUID like 123e4567-e89b-12d3-a456-426614174000, "
            f"or at least its first {p.MIN_PREFIX} characters"
        )
    return some_id


def _int_param(request: Request, name: str, default: int, ceiling: int = 2**62) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) > ceiling:
        raise BadRequest(f"query parameter {name} must be a whole number from 0 to {ceiling}, got {raw!r}")
    return int(raw)


def _task_filter(request: Request, service: HostService) -> TaskFilter:
    q = request.query_params
    try:
        states = p.parse_states(q.get("state", ""))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    batch = q.get("batch", "")
    if batch and not p.is_id_or_prefix(batch):
        raise BadRequest(f"malformed batch ID {batch!r}")
    return TaskFilter(states=states, node=q.get("node", ""), batch_id=service.resolve_batch(batch) if batch else "",
                      name=q.get("name", ""), owner=q.get("user", ""))


def _float_param(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a number, got {raw!r}") from None
    if not 0 <= value <= p.MAX_WAIT_SECONDS:
        raise BadRequest(f"query parameter {name} must be between 0 and {p.MAX_WAIT_SECONDS:g}")
    return value


class _Api:
    """One method per route; each decodes, calls the service, encodes."""

    def __init__(self, service: HostService) -> None:
        self.service = service
        self._openapi: bytes | None = None

    async def submit(self, request: Request) -> Response:
        body = await read_body(request, p.SubmitRequest)
        if not body.tasks:
            raise BadRequest("no tasks in the request")
        for spec in body.tasks:
            problem = p.spec_problem(spec)
            if problem:
                raise BadRequest(problem)
        throttles = {spec.throttle for spec in body.tasks}
        if throttles != {0} and (len(throttles) > 1 or not (body.batch or len(body.tasks) > 1)):
            raise BadRequest("a throttle (%K) is one number for a whole batch: give it with --array RANGE%K")
        try:
            ids, batch_id = await self.service.submit(body.tasks, body.batch, owner=_caller(request).name)
        except SubmitRefused as exc:
            raise BadRequest(str(exc), 422) from None
        except StoreWriteError as exc:
            raise BadRequest(f"{exc}; nothing was submitted: free space on the host's disk and submit again", 507) from None
        # no settled(): submit committed the new records itself, and other requests' changes are theirs
        return json_response(p.SubmitReply(task_ids=ids, batch_id=batch_id), 201)

    def _task_id(self, request: Request) -> str:
        return self.service.resolve_task(_id(request))

    def _batch_id(self, request: Request) -> str:
        return self.service.resolve_batch(_id(request, "batch_id"))

    async def list_tasks(self, request: Request) -> Response:
        where = _task_filter(request, self.service)
        limit = _int_param(request, "limit", p.DEFAULT_LIST_LIMIT)
        offset = _int_param(request, "offset", 0)
        if 0 < limit <= SCAN_PAGE:
            tasks, total, exact = await self.service.list_tasks(where, limit, offset)
            views = [task_view(t) for t in tasks]
            return json_response(p.TaskList(tasks=views, total=total, limit=limit, offset=offset, total_exact=exact))
        return StreamingResponse(self._streamed_list(where, limit, offset), media_type="application/json")

    async def _streamed_list(self, where: TaskFilter, limit: int, offset: int) -> AsyncIterator[bytes]:
        """A TaskList of any length, encoded a page at a time on worker threads (never all in memory).

        The head and the tail are cut from the encoding of an empty TaskList (tasks is its first field).
        """
        head_and_tail = p.encode(p.TaskList(tasks=[], total=0, limit=limit, offset=offset))
        head = head_and_tail[:head_and_tail.index(b"[]") + 1]
        yield head
        separator, sent = b"", 0
        async for tasks in self.service.task_pages(where, limit, offset):
            yield separator + await asyncio.to_thread(_encoded_views, tasks)
            separator, sent = b",", sent + len(tasks)
        if limit == 0 and (sent or not offset):  # every match was sent: the count is exact
            total, exact = offset + sent, True
        else:
            total, exact = await self.service.count_tasks(where)
        yield p.encode(p.TaskList(tasks=[], total=total, limit=limit, offset=offset, total_exact=exact))[len(head):]

    async def get_task(self, request: Request) -> Response:
        return json_response(self.service.view(self.service.get_task(self._task_id(request))))

    async def task_logs(self, request: Request) -> Response:
        task_id = self._task_id(request)
        stream = request.query_params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise BadRequest(f"query parameter stream must be stdout or stderr, got {stream!r}")
        offset, tail = _int_param(request, "offset", 0), _int_param(request, "tail", 0)
        wait = _float_param(request, "wait", 0.0)

        def probe() -> tuple[str, TaskState]:
            task = self.service.get_task(task_id)
            return (task.stdout_path if stream == "stdout" else task.stderr_path), task.state

        path, state, start, end = await logs.locate(probe, offset, tail, wait)
        # a task's bytes, served on the dashboard's origin: never sniffed or shown as a page
        headers = {p.LOG_OFFSET_HEADER: str(start), p.LOG_STATE_HEADER: state.value, "X-Content-Type-Options": "nosniff",
                   "Content-Disposition": "attachment"}
        return StreamingResponse(logs.stream(path, start, end), media_type="application/octet-stream", headers=headers)

    async def wait_task(self, request: Request) -> Response:
        task_id = self._task_id(request)
        timeout = _float_param(request, "timeout", 30.0)
        return json_response(self.service.view(await self.service.wait_task(task_id, timeout)))

    async def kill_task(self, request: Request) -> Response:
        task, message = self.service.kill(self._task_id(request))
        await self.service.settled()
        return json_response(p.KillReply(task_id=task.task_id, state=task.state.value, message=message))

    async def batch(self, request: Request) -> Response:
        return json_response(await self.service.batch_view(self._batch_id(request)))

    async def batch_tasks(self, request: Request) -> Response:
        tasks = await self.service.batch_tasks(self._batch_id(request))
        return Response(b"[" + await asyncio.to_thread(_encoded_views, tasks) + b"]", media_type="application/json")

    async def wait_batch(self, request: Request) -> Response:
        batch_id = self._batch_id(request)
        return json_response(await self.service.wait_batch(batch_id, _float_param(request, "timeout", 30.0)))

    async def kill_batch(self, request: Request) -> Response:
        batch_id = self._batch_id(request)
        state, message = self.service.kill_batch(batch_id)
        await self.service.settled()
        return json_response(p.KillReply(task_id=batch_id, state=state, message=message))

    async def retry_task(self, request: Request) -> Response:
        return await self._retry(request, _id(request))

    async def retry_batch(self, request: Request) -> Response:
        return await self._retry(request, _id(request, "batch_id"))

    async def _retry(self, request: Request, some_id: str) -> Response:
        try:
            ids, batch_id = await self.service.retry_failed(some_id, _caller(request).name)
        except SubmitRefused as exc:
            raise BadRequest(str(exc), 422) from None
        except StoreWriteError as exc:
            raise BadRequest(f"{exc}; nothing was submitted: free space on the host's disk and retry again", 507) from None
        return json_response(p.SubmitReply(task_ids=ids, batch_id=batch_id), 201)

    async def nodes(self, request: Request) -> Response:
        return json_response([node_view(n) for n in self.service.nodes()])

    async def heartbeat(self, request: Request) -> Response:
        return json_response(await self.service.heartbeat(await read_body(request, p.Heartbeat)))

    async def report(self, request: Request) -> Response:
        ack = self.service.report(await read_body(request, p.Report))
        await self.service.settled()  # acknowledge only what is committed
        return json_response(ack)

    async def health(self, request: Request) -> Response:
        return json_response({"ok": True})

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            from hakuriver.host.openapi import document

            self._openapi = p.dumps(document())
        return Response(self._openapi, media_type="application/json")


def _encoded_views(tasks: list[Task]) -> bytes:
    return b",".join(p.encode(task_view(t)) for t in tasks)


def build_app(service: HostService, auth: Authenticator, secure_cookie: bool = False) -> Starlette:
    """One Starlette route per entry of routes.ROUTES, each behind `_guard`."""
    api = _Api(service)
    web = Web(service, auth, secure_cookie)
    handlers = {
        ("POST", p.TASKS): api.submit, ("GET", p.TASKS): api.list_tasks, ("GET", p.TASK): api.get_task,
        ("GET", p.TASK_LOGS): api.task_logs, ("GET", p.TASK_WAIT): api.wait_task, ("POST", p.TASK_KILL): api.kill_task,
        ("GET", p.BATCH): api.batch, ("GET", p.BATCH_TASKS): api.batch_tasks, ("GET", p.BATCH_WAIT): api.wait_batch,
        ("POST", p.BATCH_KILL): api.kill_batch, ("POST", p.TASK_RETRY): api.retry_task,
        ("POST", p.BATCH_RETRY): api.retry_batch, ("GET", p.NODES): api.nodes,
        ("POST", p.RUNNER_HEARTBEAT): api.heartbeat, ("POST", p.RUNNER_REPORT): api.report,
        ("GET", p.HEALTH): api.health, ("GET", p.OPENAPI): api.openapi, **web.handlers(),
    }
    guarded = {(r.method, r.path): _guard(handlers[(r.method, r.path)], r, auth, service) for r in routes.ROUTES}
    return _App([Route(path, handler, methods=[method]) for (method, path), handler in guarded.items()],
                {key: handler for key, handler in guarded.items() if "{" not in key[1]})


class _App(Starlette):
    """Starlette, with a route without path parameters found by one dict lookup.

    A runner's report or heartbeat would otherwise be matched against every route in turn and
    pass Starlette's middleware, for each of the several requests a busy node makes per second;
    the handler is the same guarded one either way (it turns every failure into an answer).
    """

    def __init__(self, routes: list[Route], exact: dict[tuple[str, str], Handler]) -> None:
        super().__init__(routes=routes)
        self._exact = exact

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - the ASGI signature
        handler = self._exact.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        if handler is None or scope.get("root_path") or self.user_middleware:  # middleware added later applies
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)


Handler = Callable[[Request], Awaitable[Response]]
#: what an OWNER route does, for the one line that refuses it
_ACTIONS = {"logs": "read the logs of", "kill": "kill", "retry-failed": "retry"}


def _same_origin(request: Request, required: bool) -> bool:
    """The browser says the request comes from a page of this host and port (Sec-Fetch-Site, else
    Origin); without either, `required` decides (a browser sends Origin with every POST)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return not required
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


def _caller(request: Request) -> Identity:
    return request.state.identity


def _check_access(request: Request, route: routes.Route, auth: Authenticator, service: HostService) -> None:
    """Who is asking, and may they: Unauthorized (401) or Forbidden (403) if not."""
    if route.method == "POST" and route.path == p.LOGIN and not _same_origin(request, required=False):
        raise Forbidden("a login from another origin is refused")
    if route.access == routes.PUBLIC or (route.access == routes.METRICS_ACCESS and auth.metrics_public):
        return
    header = request.headers.get("authorization")
    cookie = None if header else request.cookies.get(p.TOKEN_COOKIE)
    # the dashboard's cookie: SameSite=Strict keeps other sites out, but not a page on another
    # port of this host; a change made with it must come from this very origin
    if cookie and request.method not in ("GET", "HEAD") and not _same_origin(request, required=True):
        raise Forbidden("a change made with the dashboard's cookie must come from the dashboard's own page")
    who = auth.identify(header or (f"Bearer {cookie}" if cookie else None))
    allowed(route.access, who)
    request.state.identity = who
    if route.access == routes.OWNER and not who.admin:
        kinds = ("batch",) if "batch_id" in request.path_params else \
            ("task", "batch") if route.path == p.TASK_RETRY else ("task",)
        some_id = _id(request, "batch_id" if kinds == ("batch",) else "task_id")
        kind, full_id, owner = service.owner_of(some_id, kinds)
        check_owner(who, owner, f"{kind} {full_id}", _ACTIONS[route.path.rsplit("/", 1)[1]])


def _check_query(request: Request, takes: set[str]) -> None:
    unknown = sorted(set(request.query_params) - takes)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r} (this route takes: {', '.join(sorted(takes)) or 'none'})")
    empty = next((k for k, v in request.query_params.multi_items() if v == ""), None)
    if empty is not None:
        raise BadRequest(f"query parameter {empty} is empty: give a value or leave it out")


def _guard(handler: Handler, route: routes.Route, auth: Authenticator, service: HostService) -> Handler:
    """Check who is asking (routes.Route.access); refuse query parameters the route does not take (a
    typo is an error, not ignored); turn every failure into one JSON error line. An unexpected
    failure is logged, never fatal."""
    takes = {name for name, _ in route.query}

    async def guarded(request: Request) -> Response:
        try:
            _check_access(request, route, auth, service)
            _check_query(request, takes)
            return await handler(request)
        except Unauthorized as exc:
            if route.access == routes.RUNNER:
                auth.refused_runner(request.client.host if request.client else "?")
            return json_response(p.ErrorReply(error=str(exc)), 401, {"WWW-Authenticate": "Bearer"})
        except Forbidden as exc:
            return error_response(str(exc), 403)
        except BadRequest as exc:
            return error_response(str(exc), exc.status)
        except NotFound as exc:
            return error_response(str(exc), 404)
        except (KillRefused, AmbiguousId, NodeTaken) as exc:
            return error_response(str(exc), 409)
        except logs.LogUnavailable as exc:
            return error_response(str(exc), 404)
        except StoreWriteError as exc:  # the change stays in memory; the host commits it once it can
            return error_response(f"{exc}; the request is kept and carried out once the host's disk has room", 507)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            return error_response("internal error in the host; see the host's log", 500)

    return guarded
