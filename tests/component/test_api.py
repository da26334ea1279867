"""The host app in-process (no port): real SQLite in tmp_path, runner side played by the test."""

from __future__ import annotations

import uuid

import pytest

from hakuriver import protocol as p
from hakuriver.host.store import Store
from support import authed_client, in_process_app


@pytest.fixture
def api(tmp_path):  # noqa: ANN001, ANN201
    store = Store(str(tmp_path / "sub" / "h.db"))
    app, tokens = in_process_app(store)
    with authed_client(app, tokens["ada"]) as client:
        client.db_path = tmp_path / "sub" / "h.db"
        yield client
    store.close()


def heartbeat(api, held=(), wait=0.0, name="a", cores=2) -> dict:  # noqa: ANN001
    hb = p.Heartbeat(node=p.NodeInfo(name, list(range(cores))), held=list(held), wait=wait)
    r = api.post(p.RUNNER_HEARTBEAT, content=p.encode(hb))
    assert r.status_code == 200, r.text
    return r.json()


def submit(api, *specs: p.TaskSpec) -> list[str]:  # noqa: ANN001
    r = api.post(p.TASKS, content=p.encode(p.SubmitRequest(tasks=list(specs))))
    assert r.status_code == 201, r.text
    return r.json()["task_ids"]


def test_task_id_is_committed_before_it_is_returned(api):
    heartbeat(api)
    [task_id] = submit(api, p.TaskSpec("true"))
    # a second connection to the file sees it: it was committed, not just held in memory
    reopened = Store(str(api.db_path))
    assert reopened.get_task(task_id).state.value in ("pending", "assigning")
    reopened.close()


def test_queue_accepts_more_than_free_cores(api):
    heartbeat(api, cores=1)
    ids = submit(api, *[p.TaskSpec("true") for _ in range(5)])
    states = [api.get(p.TASK.format(task_id=i)).json()["state"] for i in ids]
    assert states == ["assigning"] + ["pending"] * 4


def test_runner_receives_launch_orders_then_reports(api):
    heartbeat(api)
    [task_id] = submit(api, p.TaskSpec("echo", ["hi"], cores=2))
    orders = heartbeat(api)
    assert [o["task_id"] for o in orders["launch"]] == [task_id]
    assert orders["launch"][0]["core_ids"] == [0, 1]
    assert heartbeat(api, held=[task_id])["launch"] == []  # held: not sent again
    report = p.Report("a", [p.TaskStarted(task_id, 1.0, "/o", "/e")], [p.TaskFinished(task_id, 2.0, exit_code=0)])
    r = api.post(p.RUNNER_REPORT, content=p.encode(report))
    assert r.json() == {"task_ids": [task_id], "orders": None}  # no `held`: no orders wanted
    view = api.get(p.TASK.format(task_id=task_id)).json()
    assert view["state"] == "completed" and view["stdout_path"] == "/o"


def test_a_report_with_held_gets_the_freed_cores_next_task_in_its_ack(api):
    heartbeat(api, cores=1)
    first, second = submit(api, p.TaskSpec("true"), p.TaskSpec("true"))
    assert [o["task_id"] for o in heartbeat(api, cores=1)["launch"]] == [first]
    report = p.Report("a", [p.TaskStarted(first, 1.0)], [p.TaskFinished(first, 2.0, exit_code=0)], held=[first])
    ack = api.post(p.RUNNER_REPORT, content=p.encode(report)).json()
    assert ack["task_ids"] == [first]
    assert [o["task_id"] for o in ack["orders"]["launch"]] == [second]
    assert api.get(p.TASK.format(task_id=second)).json()["node"] == "a"
    # a runner reporting again before it took the order is not sent it twice ...
    again = p.Report("a", held=[])
    assert api.post(p.RUNNER_REPORT, content=p.encode(again)).json()["orders"]["launch"] == []
    # ... but a heartbeat says what the node really holds: without `second`, it is sent again
    assert [o["task_id"] for o in heartbeat(api, cores=1)["launch"]] == [second]


def test_wait_returns_when_the_task_ends(api):
    heartbeat(api)
    [task_id] = submit(api, p.TaskSpec("true"))
    pending = api.get(p.TASK_WAIT.format(task_id=task_id) + "?timeout=0.1").json()
    assert pending["state"] == "assigning"
    api.post(p.RUNNER_REPORT, content=p.encode(p.Report("a", finished=[p.TaskFinished(task_id, 2.0, exit_code=3)])))
    done = api.get(p.TASK_WAIT.format(task_id=task_id) + "?timeout=5").json()
    assert done["state"] == "failed" and done["exit_code"] == 3


def test_unknown_and_malformed_ids(api):
    assert api.get(p.TASK.format(task_id=str(uuid.uuid4()))).status_code == 404
    r = api.get(p.TASK.format(task_id="x"))
    assert r.status_code == 400 and "malformed ID" in r.json()["error"]
    assert api.get(p.TASK_WAIT.format(task_id=str(uuid.uuid4())) + "?timeout=abc").status_code == 400


def test_kill_finished_is_409(api):
    heartbeat(api)
    [task_id] = submit(api, p.TaskSpec("true"))
    api.post(p.RUNNER_REPORT, content=p.encode(p.Report("a", finished=[p.TaskFinished(task_id, 2.0, exit_code=0)])))
    r = api.post(p.TASK_KILL.format(task_id=task_id))
    assert r.status_code == 409 and "already finished (completed)" in r.json()["error"]


def test_batch_submission_is_all_or_nothing(api):
    heartbeat(api, cores=2)
    r = api.post(p.TASKS, content=p.encode(p.SubmitRequest(tasks=[p.TaskSpec("true"), p.TaskSpec("true", cores=3)])))
    assert r.status_code == 422
    assert Store(str(api.db_path)).active_tasks() == []


def test_nodes_view(api):
    heartbeat(api, name="b", cores=3)
    [node] = api.get(p.NODES).json()
    assert (node["name"], node["state"], node["total_cores"], node["free_cores"]) == ("b", "online", 3, 3)


def _seed(api, *task_ids: str, batch_id: str = "") -> None:
    """Records with chosen IDs, written as the store writes any task."""
    from hakuriver.core.model import Task

    store = Store(str(api.db_path))
    store.insert([Task(i, "true", [], {}, 1, 1.0, batch_id=batch_id) for i in task_ids])
    store.close()


def test_short_ids_resolve_and_ambiguous_ones_list_their_matches(api):
    a, b = "abcdef01-1111-4111-8111-111111111111", "abcdef01-2222-4222-8222-222222222222"
    _seed(api, a, b)
    assert api.get(p.TASK.format(task_id="abcdef01-1")).json()["task_id"] == a
    r = api.get(p.TASK.format(task_id="ABCDEF01"))
    assert r.status_code == 409
    assert r.json()["error"] == f"the short ID abcdef01 matches more than one task: {a}, {b}; give more characters"
    assert api.get(p.TASK.format(task_id="abcdef02")).status_code == 404
    assert api.get(p.TASK.format(task_id="abcdef0")).status_code == 400  # under 8 characters


def test_batch_prefixes_find_distinct_batches(api):
    one, two = "feed0000-0000-4000-8000-000000000001", "feed0000-0000-4000-8000-000000000002"
    _seed(api, *(str(uuid.uuid4()) for _ in range(3)), batch_id=one)
    _seed(api, str(uuid.uuid4()), batch_id=two)
    assert api.get(p.BATCH.format(batch_id=one[:-1] + "1")).json()["total"] == 3
    r = api.get(p.BATCH.format(batch_id="feed0000"))
    assert r.status_code == 409 and f"{one}, {two}" in r.json()["error"]
    assert api.get(p.TASKS, params={"batch": one[:-1] + "1", "limit": 2}).json()["total"] == 3


@pytest.mark.parametrize("query, problem", [
    ({"state": "nope"}, "unknown state 'nope'"),
    ({"limit": "-1"}, "limit must be a whole number"),
    ({"offset": "x"}, "offset must be a whole number"),
    ({"batch": "zz"}, "malformed batch ID"),
])
def test_bad_list_queries_are_400s(api, query, problem):
    r = api.get(p.TASKS, params=query)
    assert r.status_code == 400 and problem in r.json()["error"]


def test_logs_of_a_task_that_has_not_started_are_empty(api):
    heartbeat(api)
    [task_id] = submit(api, p.TaskSpec("true"))
    r = api.get(p.TASK_LOGS.format(task_id=task_id))
    assert r.status_code == 200 and r.content == b""
    assert r.headers[p.LOG_STATE_HEADER] == "assigning" and r.headers[p.LOG_OFFSET_HEADER] == "0"
    assert api.get(p.TASK_LOGS.format(task_id=task_id), params={"stream": "both"}).status_code == 400


def test_long_lists_stream_page_by_page_in_the_same_shape(api, monkeypatch):
    import hakuriver.host.service as service_module

    monkeypatch.setattr(service_module, "SCAN_PAGE", 7)  # many pages from a few tasks
    ids = [str(uuid.uuid4()) for _ in range(25)]
    for task_id in ids:  # one insert each: rowid order is submission order
        _seed(api, task_id)
    whole = api.get(p.TASKS, params={"limit": 0}).json()
    assert [t["task_id"] for t in whole["tasks"]] == ids[::-1]
    assert (whole["total"], whole["limit"], whole["offset"]) == (25, 0, 0)
    part = api.get(p.TASKS, params={"limit": 2000, "offset": 3}).json()  # streamed too (over SCAN_PAGE)
    assert [t["task_id"] for t in part["tasks"]] == ids[::-1][3:] and part["total"] == 25
    small = api.get(p.TASKS, params={"limit": 5, "offset": 20}).json()
    assert [t["task_id"] for t in small["tasks"]] == ids[::-1][20:] and small["total"] == 25


def test_counts_stop_at_the_count_limit(api, monkeypatch):
    import hakuriver.host.store as store_module

    monkeypatch.setattr(store_module, "COUNT_LIMIT", 4)
    _seed(api, *(str(uuid.uuid4()) for _ in range(6)))
    page = api.get(p.TASKS, params={"limit": 2}).json()
    assert (len(page["tasks"]), page["total"], page["total_exact"]) == (2, 4, False)
    whole = api.get(p.TASKS, params={"limit": 0}).json()  # everything was sent: counted exactly
    assert (len(whole["tasks"]), whole["total"], whole["total_exact"]) == (6, 6, True)
    monkeypatch.setattr(store_module, "COUNT_LIMIT", 6)
    page = api.get(p.TASKS, params={"limit": 2}).json()
    assert (page["total"], page["total_exact"]) == (6, True)
