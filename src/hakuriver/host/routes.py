"""The route table: what the host serves, who may call each route, what it takes and gives.

The paths themselves are the protocol's (protocol.py, shared with the client and the runner);
this table is the host's: app.py builds one guarded Starlette route per entry, openapi.py
describes them, and the tests walk it so that no route escapes its access check.
"""

from __future__ import annotations

from hakuriver.protocol import (
    ASSET, BATCH, BATCH_KILL, BATCH_RETRY, BATCH_TASKS, BATCH_WAIT, DASHBOARD, EVENTS, HEALTH, LOGIN, LOGOUT, ME,
    METRICS, NODES, OPENAPI, RUNNER_HEARTBEAT, RUNNER_REPORT, TASK, TASK_KILL, TASK_LOGS, TASK_RETRY, TASK_WAIT, TASKS,
    Ack, BatchView, Heartbeat, KillReply, LoginRequest, Me, NodeView, Orders, Report, SubmitReply, SubmitRequest,
    TaskList, TaskView,
)


class Route:
    """One route: its method and path, who may use it, what it takes and gives, and its query
    parameters (name, then "string", "integer", "number" or a tuple of the allowed strings).

    `access` has no default, so a new route cannot be added without saying who may call it:
    PUBLIC (anyone), USER (any user's token), OWNER (the owner of the task or batch in the
    path, or an admin), RUNNER (the cluster key).
    """

    __slots__ = ("method", "path", "summary", "access", "request", "reply", "query", "status")

    def __init__(self, method: str, path: str, summary: str, *, access: str, request: object = None,
                 reply: object = None, query: tuple[tuple[str, object], ...] = (), status: int = 200) -> None:
        if access not in ACCESS:
            raise ValueError(f"unknown access {access!r} for {method} {path}")
        self.method, self.path, self.summary, self.access = method, path, summary, access
        self.request, self.reply, self.query, self.status = request, reply, query, status


PUBLIC, USER, OWNER, RUNNER = "public", "user", "owner", "runner"
#: USER, or PUBLIC under `[auth] metrics_public = true`
METRICS_ACCESS = "metrics"
ACCESS = (PUBLIC, USER, OWNER, RUNNER, METRICS_ACCESS)
_FILTERS = (("state", "string"), ("node", "string"), ("batch", "string"), ("name", "string"), ("user", "string"),
            ("limit", "integer"), ("offset", "integer"))
_LONG_POLL = (("timeout", "number"),)
#: a raw body (a log's bytes), not JSON
RAW = "raw"
#: other bodies that are not JSON: the dashboard's page and files, events, metrics
HTML, FILE, EVENT_STREAM, PROMETHEUS = "text/html", "file", "text/event-stream", "text/plain"

ROUTES: tuple[Route, ...] = (
    Route("POST", TASKS, "submit tasks (one, or a batch); the caller owns them", access=USER,
          request=SubmitRequest, reply=SubmitReply, status=201),
    Route("GET", TASKS, "list tasks, newest first; limit=0 streams every match", access=USER, reply=TaskList,
          query=_FILTERS),
    Route("GET", TASK, "a task's record", access=USER, reply=TaskView),
    Route("GET", TASK_LOGS, "a task's output, from an offset or its last lines", access=OWNER, reply=RAW,
          query=(("stream", ("stdout", "stderr")), ("offset", "integer"), ("tail", "integer"), ("wait", "number"))),
    Route("GET", TASK_WAIT, "the task's record once it is final, or after timeout seconds", access=USER,
          reply=TaskView, query=_LONG_POLL),
    Route("POST", TASK_KILL, "kill a task's whole process tree", access=OWNER, reply=KillReply),
    Route("POST", TASK_RETRY, "resubmit what did not complete of a task (or of a batch with that ID) as a new batch",
          access=OWNER, reply=SubmitReply, status=201),
    Route("GET", BATCH, "a batch's counts by state and its first problems", access=USER, reply=BatchView),
    Route("GET", BATCH_TASKS, "every task record of a batch", access=USER, reply=list[TaskView]),
    Route("GET", BATCH_WAIT, "the batch's view once every task is final, or after timeout seconds", access=USER,
          reply=BatchView, query=_LONG_POLL),
    Route("POST", BATCH_KILL, "kill every unfinished task of a batch", access=OWNER, reply=KillReply),
    Route("POST", BATCH_RETRY, "resubmit what did not complete of a batch as a new batch", access=OWNER,
          reply=SubmitReply, status=201),
    Route("GET", NODES, "every node", access=USER, reply=list[NodeView]),
    Route("POST", RUNNER_HEARTBEAT, "a runner's heartbeat; answered with orders (long-poll)", access=RUNNER,
          request=Heartbeat, reply=Orders),
    Route("POST", RUNNER_REPORT, "a runner's started and finished tasks; answered with an acknowledgement",
          access=RUNNER, request=Report, reply=Ack),
    Route("GET", HEALTH, "is the host up", access=PUBLIC, reply=dict),
    Route("GET", OPENAPI, "this API's OpenAPI document", access=USER, reply=dict),
    Route("GET", EVENTS, "what changes, as it changes (server-sent events: cluster, tasks; with task=ID also "
          "that task's record and log; once=true: only the first ones, then the stream ends)", access=USER,
          reply=EVENT_STREAM, query=(("task", "string"), ("once", ("true", "false")))),
    Route("POST", LOGIN, "check a token and keep it in the dashboard's cookie (HttpOnly, SameSite=Strict)",
          access=PUBLIC, request=LoginRequest, reply=Me),
    Route("POST", LOGOUT, "clear the dashboard's cookie", access=PUBLIC, reply=dict),
    Route("GET", ME, "who the token or cookie belongs to", access=USER, reply=Me),
    Route("GET", METRICS, "Prometheus metrics (a token needed unless [auth] metrics_public)", access=METRICS_ACCESS,
          reply=PROMETHEUS),
    Route("GET", DASHBOARD, "the dashboard", access=PUBLIC, reply=HTML),
    Route("GET", ASSET, "a file of the dashboard (v: the release, so that a browser never mixes two)",
          access=PUBLIC, reply=FILE, query=(("v", "string"),)),
)

