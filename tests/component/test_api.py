"""The host app in-process (no port): real SQLite in tmp_path, runner side played by the test."""

from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from hakuriver import protocol as p
from hakuriver.core.cluster import Cluster
from hakuriver.host.app import build_app
from hakuriver.host.service import HostService
from hakuriver.host.store import Store


@pytest.fixture
def api(tmp_path):  # noqa: ANN001, ANN201
    store = Store(str(tmp_path / "sub" / "h.db"))
    service = HostService(Cluster(heartbeat_timeout=30), store)
    with TestClient(build_app(service)) as client:
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
