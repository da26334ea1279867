"""Monitoring a live host: GET /metrics parsed with prometheus-client's own parser, the
dashboard's server-sent events, and logging in with the HttpOnly, SameSite=Strict cookie."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hakuriver import protocol as p
from support import program, wait_until, write_toml


def _metrics(cluster, token: str | None) -> dict[str, list]:  # noqa: ANN001
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{cluster.url}{p.METRICS}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def _value(samples: list, **labels: str) -> float:
    found = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


def test_metrics_count_what_happened_and_need_a_token(cluster):
    before = _metrics(cluster, cluster.token)
    res = cluster.client("--array", "1-3", "--wait", "--", "true")
    assert res.returncode == 0, res.stderr
    failed = cluster.client("--wait", "--", "false")
    assert failed.returncode == 1
    after = _metrics(cluster, cluster.token)
    assert _value(after["hakuriver_tasks_submitted"]) - _value(before["hakuriver_tasks_submitted"]) == 4
    finished = after["hakuriver_tasks_finished"]
    old = before.get("hakuriver_tasks_finished", [])
    gained = {s.labels["state"]: s.value - next((o.value for o in old if o.labels == s.labels), 0)
              for s in finished if s.name.endswith("_total")}
    assert gained.get("completed") == 3 and gained.get("failed") == 1, gained
    db_counts = {r["state"]: r["n"] for r in cluster.query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")}
    tasks = after["hakuriver_tasks"]
    for state in ("completed", "failed"):  # the database counts may be up to 10 s old: compare after a fresh start
        assert _value(tasks, state=state) <= db_counts[state]
    assert _value(tasks, state="running") == 0 and _value(tasks, state="pending") == 0
    assert _value(after["hakuriver_nodes_online"]) == 2
    assert _value(after["hakuriver_node_cores"], node="a") == 4 and _value(after["hakuriver_node_cores"], node="b") == 2
    assert _value(after["hakuriver_queue_length"]) == 0
    latency = after["hakuriver_dispatch_latency_seconds"]
    count = _value([s for s in latency if s.name.endswith("_count")])
    assert count >= 4, latency
    assert httpx.get(f"{cluster.url}{p.METRICS}", timeout=10).status_code == 401
    key = httpx.get(f"{cluster.url}{p.METRICS}", headers={"Authorization": f"Bearer {cluster.cluster_key}"}, timeout=10)
    assert key.status_code == 403


def test_metrics_show_cores_in_use_while_tasks_run(cluster):
    task_id = cluster.submit("--cores", "3", "--node", "a", "--", "sleep", "30")
    try:
        cluster.wait_state(task_id, "running")
        m = _metrics(cluster, cluster.token)
        assert _value(m["hakuriver_node_cores_used"], node="a") == 3
        assert _value(m["hakuriver_tasks"], state="running") == 1
    finally:
        cluster.client("--kill", task_id)


def test_metrics_can_be_public(fresh_cluster):
    fresh_cluster.base["auth"]["metrics_public"] = True
    write_toml(fresh_cluster.config, fresh_cluster.base)
    fresh_cluster.start_host()
    families = _metrics(fresh_cluster, None)
    assert "hakuriver_tasks_submitted" in families
    assert httpx.get(f"{fresh_cluster.url}{p.NODES}", timeout=10).status_code == 401  # nothing else opens


def _events(cluster, query: str = "", until=None, timeout: float = 15.0) -> list[tuple[str, dict]]:  # noqa: ANN001
    """Read the event stream until `until(events)` holds (or fail after `timeout`)."""
    seen: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", f"{cluster.url}{p.EVENTS}{query}", cookies={p.TOKEN_COOKIE: cluster.token},
                      timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                seen.append((name, json.loads(line[6:])))
                if until is not None and until(seen):
                    return seen
            assert time.monotonic() < deadline, f"timed out; saw {[n for n, _ in seen]}"
    return seen


def test_events_show_a_task_take_its_cores_within_a_second(cluster):
    first = _events(cluster, until=lambda seen: seen)
    assert first[0][0] == "cluster"
    snap = first[0][1]
    assert {n["name"] for n in snap["nodes"]} == {"a", "b"}
    assert [c["id"] for c in next(n for n in snap["nodes"] if n["name"] == "a")["cores"]] == [0, 1, 2, 3]
    holder: dict = {}

    def cores_taken(seen: list) -> bool:
        for name, data in seen:
            if name == "cluster":
                for node in data["nodes"]:
                    for core in node["cores"]:
                        if core["task_id"] and core["task_id"] == holder.get("id"):
                            holder["core"] = (node["name"], core["id"], data["cores_used"])
                            return True
        if "id" not in holder:
            holder["id"] = cluster.submit("--name", "watched", "--", "sleep", "20")
            holder["t0"] = time.monotonic()
        return False

    try:
        _events(cluster, until=cores_taken)
        assert time.monotonic() - holder["t0"] < 5  # the test's own bound; the dashboard test measures the second
        assert holder["core"][2] >= 1
    finally:
        cluster.client("--kill", holder["id"])


def test_events_follow_one_task_and_its_log(cluster):
    task_id = cluster.submit("--", "sh", "-c", "echo one; echo err >&2; sleep 1; echo two")

    def logs(seen: list) -> dict[str, str]:
        text = {"stdout": "", "stderr": ""}
        for name, data in seen:
            if name == "log":
                assert data["offset"] == len(text[data["stream"]].encode()), (data, text)  # in order, no gap
                text[data["stream"]] += data["text"]
        return text

    seen = _events(cluster, f"?task={task_id[:8]}",
                   until=lambda s: logs(s) == {"stdout": "one\ntwo\n", "stderr": "err\n"})
    records = [data for name, data in seen if name == "task"]
    assert records[0]["task_id"] == task_id
    assert records[-1]["state"] in ("running", "completed")
    wait_until(lambda: cluster.task(task_id)["state"] == "completed", 15, "the task to complete")


def test_events_need_a_token_and_refuse_a_malformed_task(cluster):
    assert httpx.get(f"{cluster.url}{p.EVENTS}", timeout=5).status_code == 401
    r = httpx.get(f"{cluster.url}{p.EVENTS}?task=zz", cookies={p.TOKEN_COOKIE: cluster.token}, timeout=5)
    assert r.status_code == 400 and "malformed" in r.json()["error"]


@pytest.mark.parametrize("secret, status", [("wrong.token", 401), ("", 401)])
def test_login_refuses_a_bad_token_and_sets_no_cookie(cluster, secret, status):
    r = httpx.post(f"{cluster.url}{p.LOGIN}", json={"token": secret}, timeout=5)
    assert r.status_code == status and "set-cookie" not in r.headers


def test_login_keeps_the_token_in_an_httponly_strict_cookie_that_opens_the_api(cluster):
    with httpx.Client(base_url=cluster.url, timeout=5) as web:
        assert web.get(p.ME).status_code == 401
        r = web.post(p.LOGIN, json={"token": cluster.token})
        assert r.status_code == 200 and r.json()["admin"] is True
        cookie = r.headers["set-cookie"]
        assert f"{p.TOKEN_COOKIE}=" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
        assert web.get(p.ME).json()["name"] == r.json()["name"]
        assert web.get(p.NODES).status_code == 200
        web.post(p.LOGOUT)
        assert web.get(p.ME).status_code == 401
    key = httpx.post(f"{cluster.url}{p.LOGIN}", json={"token": cluster.cluster_key}, timeout=5)
    assert key.status_code == 401  # the cluster key never opens the dashboard


def test_the_dashboard_page_and_its_files_are_served_without_a_token(cluster):
    page = httpx.get(f"{cluster.url}/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "{{version}}" not in page.text
    assert httpx.get(f"{cluster.url}/ui/..%2Fapp.py", timeout=5).status_code == 404
    assert httpx.get(f"{cluster.url}/ui/nothing.js", timeout=5).status_code == 404


def test_a_followed_tasks_log_goes_only_to_its_owner_or_an_admin(cluster):
    task_id = cluster.submit("--wait", "--", "sh", "-c", "echo output-$((40 + 2))")  # the record holds the command
    res = subprocess.run(program("host") + ["--config", str(cluster.config), "--add-user", "eve"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    other = res.stdout.splitlines()[0]

    def frames(token: str) -> str:
        r = httpx.get(f"{cluster.url}{p.EVENTS}?task={task_id}&once=true", cookies={p.TOKEN_COOKIE: token}, timeout=10)
        assert r.status_code == 200
        return r.text

    assert "event: task" in frames(other) and "output-42" not in frames(other)
    assert "event: log" in frames(cluster.token) and "output-42" in frames(cluster.token)


def test_a_change_made_with_the_cookie_must_come_from_the_dashboards_own_page(cluster):
    """SameSite=Strict keeps other sites out, not a page on another port of the same host."""
    jar = {p.TOKEN_COOKIE: cluster.token}
    body = p.encode(p.SubmitRequest(tasks=[p.TaskSpec("true")]))
    before = len(cluster.query("SELECT task_id FROM tasks"))
    for headers in ({"Origin": "http://127.0.0.1:9999"}, {"Sec-Fetch-Site": "same-site"}, {}):
        r = httpx.post(f"{cluster.url}{p.TASKS}", content=body, cookies=jar, headers=headers, timeout=10)
        assert r.status_code == 403, (headers, r.text)
    assert len(cluster.query("SELECT task_id FROM tasks")) == before
    host = cluster.url.split("://", 1)[1]
    for headers in ({"Origin": f"http://{host}"}, {"Sec-Fetch-Site": "same-origin"}):
        r = httpx.post(f"{cluster.url}{p.TASKS}", content=body, cookies=jar, headers=headers, timeout=10)
        assert r.status_code == 201, (headers, r.text)
    # a script with the token in its header is not a browser: no origin needed
    r = httpx.post(f"{cluster.url}{p.TASKS}", content=body, headers={"Authorization": f"Bearer {cluster.token}"},
                   timeout=10)
    assert r.status_code == 201
    r = httpx.post(f"{cluster.url}{p.LOGIN}", json={"token": cluster.token}, headers={"Origin": "http://evil:1"},
                   timeout=10)
    assert r.status_code == 403 and "set-cookie" not in r.headers
