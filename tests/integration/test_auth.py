"""SPEC §12, point by point, against real processes (and the app in-process for the full sweep).

- First start: the cluster key and the first admin's token are made, mode 0600; only the
  token's hash is stored; the local runner and client need no extra step; a restart keeps both.
- Every served route but GET /api/health refuses a missing or wrong credential (401), and a
  valid one without the right (403), driven by the route table and by the app's own routes.
- Users: --add-user / --list-users / --remove-user (a removed token stops at once).
- Ownership through the real client: only the owner or an admin may kill, read logs, retry.
- A runner with a missing or wrong key logs one line, keeps retrying, joins once it is fixed.
- The client's one-line messages when it has no token, or a wrong one.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import pwd
import re
import socket
import stat
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from hakuriver import protocol as p
from hakuriver.host import routes
from hakuriver.host.store import Store
from support import CLUSTER_KEY, LocalCluster, Proc, in_process_app, program, wait_until, write_toml


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client must find its token where each test says, not in the developer's shell."""
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)


def _alice() -> str:
    """The owner in the ownership tests. A root runner runs each task as the Unix account named
    like its owner (SPEC §12), failing it where there is none: as root, the owner must be a real
    account, so "alice" if this machine has one, else "nobody" (every Linux system has it)."""
    if os.geteuid() != 0:
        return "alice"
    try:
        pwd.getpwnam("alice")
        return "alice"
    except KeyError:
        return "nobody"


#: the user who owns the work; "bob" is another user (his tasks need not run), neither an admin
ALICE = _alice()


# ---- helpers ---------------------------------------------------------------------------------
def host_cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    """`hakuriver.host --config ... ARGS`, as an operator runs it (next to a running host or not)."""
    return subprocess.run(program("host") + ["--config", str(cluster.config), *args], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def add_user(cluster: LocalCluster, name: str, admin: bool = False) -> str:
    res = host_cli(cluster, "--add-user", name, *(["--admin"] if admin else []))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1, f"stdout should be the token alone: {res.stdout!r}"
    return lines[0].strip()


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints on stderr; it exits non-zero, without a traceback."""
    assert res.returncode != 0, f"expected a failure, got exit 0:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.stderr}"
    return lines[0]


def as_user(token: str) -> dict[str, str]:
    return {"HAKURIVER_TOKEN": token}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def secret_bytes(text: str) -> bytes:
    """The random bytes of a secret made by secrets.token_urlsafe (unpadded base64url)."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text, f"{text!r} is not base64url"
    return raw


def users_table(cluster: LocalCluster) -> list[tuple]:
    return [tuple(r) for r in cluster.query("SELECT name, admin, token_id, token_hash, created_at FROM users ORDER BY name")]


def db_bytes(db_file: Path) -> bytes:
    """Every byte SQLite keeps for the database: the file, its write-ahead log, its shared memory."""
    return b"".join(Path(f"{db_file}{suffix}").read_bytes() for suffix in ("", "-wal", "-shm")
                    if Path(f"{db_file}{suffix}").exists())


def submitted(cluster: LocalCluster, *args: str, token: str | None = None) -> str:
    """The ID (task or batch) a submission prints first."""
    res = cluster.client(*args, env=as_user(token) if token else None)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()[0].strip()


def batch_rows(cluster: LocalCluster, batch_id: str) -> list[Any]:
    return cluster.query("SELECT * FROM tasks WHERE batch_id = ? ORDER BY task_id", batch_id)


def wait_batch_state(cluster: LocalCluster, batch_id: str, *states: str, count: int) -> list[Any]:
    def reached() -> list[Any]:
        rows = batch_rows(cluster, batch_id)
        return rows if len(rows) == count and all(r["state"] in states for r in rows) else []
    return wait_until(reached, 30, f"every task of batch {batch_id} to reach {states}")


# ---- the access sweep: every route, every kind of caller ------------------------------------
_TABLE = {(r.method, r.path): r.access for r in routes.ROUTES}
#: valid bodies, so that an allowed caller gets a real answer (the guard runs before any body is read)
_BODIES = {
    ("POST", p.TASKS): p.encode(p.SubmitRequest(tasks=[p.TaskSpec("true")])),
    ("POST", p.RUNNER_HEARTBEAT): p.encode(p.Heartbeat(node=p.NodeInfo("sweep", [0]), wait=0.0)),
    ("POST", p.RUNNER_REPORT): p.encode(p.Report("sweep")),
}
#: long-polls answer at once
_QUERY = {p.TASK_WAIT: "?timeout=0", p.BATCH_WAIT: "?timeout=0", p.EVENTS: "?once=true"}


def table_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of routes.ROUTES, with the HEAD that each GET also answers."""
    return [(m, r.path) for r in routes.ROUTES for m in ((r.method, "HEAD") if r.method == "GET" else (r.method,))]


def served_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the app really serves (HEAD included)."""
    found = []
    for route in app.routes:
        assert isinstance(route, Route), f"the app serves a {type(route).__name__}, which this sweep cannot check"
        found += [(method, route.path) for method in sorted(route.methods or ())]
    return found


def access_of(method: str, path: str) -> str | None:
    """The route table's access for it; None for a route the table does not know (checked as locked)."""
    return _TABLE.get(("GET" if method == "HEAD" else method, path))


def sweep(http: httpx.Client, routes: Iterable[tuple[str, str]], ids: dict[str, str], tokens: dict[str, str],
          cluster_key: str, owner: str, runner_calls: bool = True) -> list[str]:
    """Every (method, path) with every kind of credential; one line per answer that is not as SPEC §12 says.

    `ids` has the owner's task_id and batch_id; `tokens` the admin's, the owner's ("alice") and
    another user's ("bob"), neither of them an admin. `runner_calls`: also call the runner routes
    with the cluster key (not on a live host, whose real runners a fake node would disturb).
    """
    problems = []
    for method, path in routes:
        for who, authorization, short, expected in _cases(access_of(method, path), method, tokens, cluster_key,
                                                          runner_calls):
            fill = {k: v[:p.MIN_PREFIX] if short else v for k, v in ids.items()}
            r = http.request(method, path.format(**fill) + _QUERY.get(path, ""),
                             content=_BODIES.get(("GET" if method == "HEAD" else method, path)),
                             headers={} if authorization is None else {"Authorization": authorization})
            if not _as_expected(expected, r, method, owner):
                id_kind = " (a short ID)" if short else ""
                problems.append(f"{method} {path} with {who}{id_kind}: {r.status_code} {r.text[:200]!r} "
                                f"(wanted {expected})")
    return problems


def _cases(access: str | None, method: str, tokens: dict[str, str], cluster_key: str,
           runner_calls: bool) -> list[tuple[str, str | None, bool, str]]:
    """(who, Authorization header, short ID?, the answer wanted) for a route of this access;
    a route the table does not know (access None) is checked as locked."""
    if access == routes.PUBLIC:
        return [("no token", None, False, "allowed")]
    token_id, secret = tokens["alice"].split(".", 1)
    wrong = {
        "no Authorization header": None,
        "an unknown well-formed token": "Bearer 0123456789abcdef.not-a-secret-the-host-knows",
        "alice's token id with a wrong secret": f"Bearer {token_id}.{'A' * len(secret)}",
        "alice's token with one more character": f"Bearer {tokens['alice']}x",
        "the cluster key with one more character": f"Bearer {cluster_key}x",
        "'Bearer' alone": "Bearer",
        "alice's token without a scheme": tokens["alice"],
        "alice's token under the Basic scheme": f"Basic {tokens['alice']}",
        "basic credentials": "Basic " + base64.b64encode(b"alice:secret").decode(),
        "a 2,000-character token": "Bearer " + "x" * 2000,
    }
    cases = [(who, authorization, False, "401") for who, authorization in wrong.items()]
    if method == "HEAD" or access is None:
        return cases
    user = {who: f"Bearer {tokens[who]}" for who in ("admin", "alice", "bob")}
    key = f"Bearer {cluster_key}"
    if access == routes.RUNNER:
        cases += [("the admin's token", user["admin"], False, "403"), ("alice's token", user["alice"], False, "403")]
        cases += [("the cluster key", key, False, "allowed")] if runner_calls else []
        return cases
    cases.append(("the cluster key", key, False, "403"))
    if access == routes.OWNER:
        cases += [("bob's token", user["bob"], short, "403 naming the owner") for short in (False, True)]
    allowed = ("admin", "alice", "bob") if access in (routes.USER, routes.METRICS_ACCESS) else ("admin", "alice")
    return cases + [(f"{who}'s token", user[who], False, "allowed") for who in allowed]


def _as_expected(expected: str, r: httpx.Response, method: str, owner: str) -> bool:
    doc = None if method == "HEAD" or "json" not in r.headers.get("content-type", "") else r.json()
    error = doc.get("error", "") if isinstance(doc, dict) else ""
    if expected == "401":
        return r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer" and (method == "HEAD" or bool(error))
    if expected == "403":
        return r.status_code == 403 and bool(error)
    if expected == "403 naming the owner":
        return r.status_code == 403 and f"belongs to {owner}" in error
    if expected == "200":
        return r.status_code == 200
    return r.status_code not in (401, 403)


@pytest.fixture
def in_process(tmp_path: Path):  # noqa: ANN201
    """The host's app on a real SQLite file, with a node, and a task and a batch of alice's."""
    store = Store(str(tmp_path / "host.db"))
    app, tokens = in_process_app(store, (("ada", True), ("alice", False), ("bob", False)))
    tokens["admin"] = tokens.pop("ada")
    with TestClient(app) as http:
        r = http.post(p.RUNNER_HEARTBEAT, content=p.encode(p.Heartbeat(node=p.NodeInfo("a", [0, 1]), wait=0.0)),
                      headers=bearer(CLUSTER_KEY))
        assert r.status_code == 200, r.text
        r = http.post(p.TASKS, content=p.encode(p.SubmitRequest(tasks=[p.TaskSpec("true")])), headers=bearer(tokens["alice"]))
        assert r.status_code == 201, r.text
        task_id = r.json()["task_ids"][0]
        batch = p.SubmitRequest(tasks=[p.TaskSpec("true"), p.TaskSpec("false")], batch=True)
        r = http.post(p.TASKS, content=p.encode(batch), headers=bearer(tokens["alice"]))
        assert r.status_code == 201, r.text
        yield app, http, tokens, {"task_id": task_id, "batch_id": r.json()["batch_id"], "name": "app.js"}
    store.close()


def test_the_app_serves_exactly_the_route_table(in_process):  # noqa: ANN001
    app, *_ = in_process
    assert sorted(set(served_routes(app))) == sorted(set(table_routes()))


def test_every_served_route_refuses_wrong_credentials_and_other_users(in_process):  # noqa: ANN001
    app, http, tokens, ids = in_process
    problems = sweep(http, served_routes(app), ids, tokens, CLUSTER_KEY, owner="alice")
    assert not problems, "\n".join(problems)


def test_the_sweep_finds_a_route_added_without_a_guard(in_process):  # noqa: ANN001
    """The sweep above can fail: a route added to the app directly, unguarded, is reported."""
    app, http, tokens, ids = in_process

    async def leak(request: Any) -> JSONResponse:
        return JSONResponse({"secret": "everything"})

    app.router.routes.append(Route("/api/tasks/{task_id}/leak", leak, methods=["GET"]))
    problems = sweep(http, served_routes(app), ids, tokens, CLUSTER_KEY, owner="alice")
    assert any("/leak with no Authorization header: 200" in line for line in problems), problems
    assert all("/leak" in line for line in problems), problems


def test_health_answers_without_a_token_and_nothing_else_does(cluster):  # noqa: ANN001
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        r = http.get(p.HEALTH)
        assert r.status_code == 200 and r.json() == {"ok": True}
        r = http.get(p.NODES)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


# ---- against a live host ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def people(cluster):  # noqa: ANN001, ANN201
    """Two users of the live cluster who are not admins, and the first admin."""
    return {"alice": add_user(cluster, ALICE), "bob": add_user(cluster, "bob"), "admin": cluster.token}


def test_live_host_refuses_every_route_without_the_right_credential(cluster, people):  # noqa: ANN001
    task_id = submitted(cluster, "--", "true", token=people["alice"])
    batch_id = submitted(cluster, "--array", "1-2", "--", "true", token=people["alice"])
    with httpx.Client(base_url=cluster.url, timeout=15) as http:
        problems = sweep(http, table_routes(), {"task_id": task_id, "batch_id": batch_id, "name": "app.js"}, people,
                         cluster.cluster_key, owner=ALICE, runner_calls=False)
    assert not problems, "\n".join(problems)


# ---- 1. first start ----------------------------------------------------------------------------
def test_first_start_makes_the_key_and_an_admin_and_the_local_commands_just_work(fresh_cluster):  # noqa: ANN001
    c = fresh_cluster
    key_file, token_file = Path(c.base["auth"]["cluster_key_file"]), c.token_file
    assert not key_file.exists() and not token_file.exists()
    c.start_host()

    for secret_file in (key_file, token_file):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    [(name, admin, token_id, token_hash, _)] = users_table(c)
    assert (name, admin) == (getpass.getuser(), 1)
    token_part, _, secret = c.token.partition(".")
    assert token_part == token_id and hashlib.sha256(secret.encode()).hexdigest() == token_hash
    assert len(secret_bytes(secret)) * 8 >= 128
    assert len(secret_bytes(c.cluster_key)) * 8 >= 128
    stored = db_bytes(c.db_file)
    assert token_hash.encode() in stored  # the bytes read are where the record is ...
    assert secret.encode() not in stored and secret_bytes(secret) not in stored  # ... and the secret is not there
    assert c.cluster_key.encode() not in stored

    first, second = add_user(c, "ann"), add_user(c, "ben")
    assert first != second and first.split(".")[0] != second.split(".")[0] and first.split(".")[1] != second.split(".")[1]

    # the runner and the client of the same config: nothing to set up
    c.start_runner("a", 2)
    c.wait_online("a")
    res = c.client("--wait", "--", "echo", "hi")
    assert res.returncode == 0, res.stderr
    task = c.task(res.stdout.splitlines()[0].strip())
    assert task["owner"] == getpass.getuser()
    assert Path(task["stdout_path"]).read_text() == "hi\n"

    # a second start keeps the key, the token and the users
    key, token, users = c.cluster_key, c.token, users_table(c)
    c.host.stop()
    c.start_host()
    assert (c.cluster_key, c.token, users_table(c)) == (key, token, users)
    for secret_file in (key_file, token_file):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    c.wait_online("a")
    res = c.client("--wait", "--", "echo", "again")
    assert res.returncode == 0, res.stderr


def test_a_lost_token_file_gets_the_first_admin_a_new_token_and_ends_the_old_one(fresh_cluster):  # noqa: ANN001
    c = fresh_cluster
    c.start_host()
    old = c.token
    c.host.stop()
    c.token_file.unlink()
    c.start_host()
    new = c.token
    assert new != old and stat.S_IMODE(c.token_file.stat().st_mode) == 0o600
    with httpx.Client(base_url=c.url, timeout=10) as http:
        assert http.get(p.NODES, headers=bearer(new)).status_code == 200
        assert http.get(p.NODES, headers=bearer(old)).status_code == 401
    [(name, admin, *_)] = users_table(c)
    assert (name, admin) == (getpass.getuser(), 1)


# ---- 3. managing users -----------------------------------------------------------------------
def test_a_removed_users_token_is_refused_at_once(cluster, people):  # noqa: ANN001
    token = add_user(cluster, "carol")
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        assert http.get(p.NODES, headers=bearer(token)).status_code == 200
        res = host_cli(cluster, "--remove-user", "carol")
        assert res.returncode == 0, res.stderr
        r = http.get(p.NODES, headers=bearer(token))  # no restart, no wait
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert http.get(p.NODES, headers=bearer(people["bob"])).status_code == 200  # others unaffected
    assert "carol" not in [row[0] for row in users_table(cluster)]
    line = one_error_line(cluster.client("--list-nodes", env=as_user(token)))
    assert "HAKURIVER_TOKEN" in line


def test_a_removed_admins_token_stays_refused_after_a_restart(fresh_cluster):  # noqa: ANN001
    c = fresh_cluster
    c.start_host()
    token = c.token
    add_user(c, "keeper", admin=False)
    res = host_cli(c, "--remove-user", getpass.getuser())
    assert res.returncode == 0, res.stderr
    with httpx.Client(base_url=c.url, timeout=10) as http:
        assert http.get(p.NODES, headers=bearer(token)).status_code == 401
    c.host.stop()
    c.start_host()
    with httpx.Client(base_url=c.url, timeout=10) as http:
        r = http.get(p.NODES, headers=bearer(token))
    assert r.status_code == 401, f"the removed admin's token works again after a restart: {users_table(c)}"


@pytest.mark.parametrize("args, says", [
    (["--add-user", ALICE], "already exists"),
    (["--add-user", "bob", "--admin"], "already exists"),
    (["--add-user", "1alice"], "invalid user name"),
    (["--add-user", "al ice"], "invalid user name"),
    (["--add-user", "a/b"], "invalid user name"),
    (["--add-user=-x"], "invalid user name"),
    (["--add-user", ""], "invalid user name"),
    (["--remove-user", ""], "no user named"),
    (["--add-user", "a" * 33], "invalid user name"),
    (["--add-user", "eve\n"], "invalid user name"),
    (["--admin"], "--admin goes with --add-user"),
    (["--admin", "--list-users"], "--admin goes with --add-user"),
    (["--admin", "--remove-user", "bob"], "--admin goes with --add-user"),
    (["--remove-user", "zed"], "no user named zed"),
])
def test_user_commands_that_cannot_be_done_say_so_in_one_line_and_change_nothing(cluster, people, args, says):  # noqa: ANN001
    before = users_table(cluster)
    try:
        res = host_cli(cluster, *args)
        line = one_error_line(res)
        assert says in line, line
        assert res.stdout == ""  # no token printed
        assert users_table(cluster) == before
    finally:  # a user made by mistake would upset the module's other tests
        for name in {row[0] for row in users_table(cluster)} - {row[0] for row in before}:
            host_cli(cluster, "--remove-user", name)


def test_list_users_shows_names_and_roles(cluster, people):  # noqa: ANN001
    res = host_cli(cluster, "--list-users")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "ROLE"]
    roles = {row.split()[0]: row.split()[1] for row in rows}
    assert roles == {name: "admin" if admin else "user" for name, admin, *_ in users_table(cluster)}
    assert roles[getpass.getuser()] == "admin" and roles[ALICE] == roles["bob"] == "user"
    for _, _, token_id, token_hash, _ in users_table(cluster):
        assert token_id not in res.stdout and token_hash not in res.stdout


# ---- 4. ownership through the client ---------------------------------------------------------
@pytest.fixture(scope="module")
def alices(cluster, people):  # noqa: ANN001, ANN201
    """Alice's work: a running task, a failed one with output, a running batch and a failed batch."""
    alice = people["alice"]
    work = {
        "running": submitted(cluster, "--", "sleep", "300", token=alice),
        "running_batch": submitted(cluster, "--array", "1-2", "--", "sleep", "300", token=alice),
        "failed_batch": submitted(cluster, "--array", "1-2", "--", "sh", "-c", "echo alice-batch-output; exit 1",
                                  token=alice),
    }
    res = cluster.client("--wait", "--", "sh", "-c", "echo alice-private-output; exit 3", env=as_user(alice))
    assert res.returncode == 3, res.stderr
    work["failed"] = res.stdout.splitlines()[0].strip()
    cluster.wait_state(work["running"], "running")
    cluster.wait_state(work["failed"], "failed")
    wait_batch_state(cluster, work["running_batch"], "running", count=2)
    work["batch_task"] = wait_batch_state(cluster, work["failed_batch"], "failed", count=2)[0]["task_id"]
    return work


def _snapshot(cluster: LocalCluster) -> list[tuple]:
    """What a refused request must not change: every task's state, kill flag, end and attempt."""
    return [tuple(r) for r in cluster.query(
        "SELECT task_id, state, kill_requested, finished_at, attempt, owner FROM tasks ORDER BY task_id")]


@pytest.mark.parametrize("action, target", [
    ("--kill", "running"), ("--logs", "failed"), ("--retry-failed", "failed"),
    ("--kill", "running_batch"), ("--logs", "batch_task"), ("--retry-failed", "failed_batch"),
    ("--logs", "running"),
])
def test_another_user_may_not_kill_read_or_retry_alices_work(cluster, people, alices, action, target):  # noqa: ANN001
    before = _snapshot(cluster)
    res = cluster.client(action, alices[target], env=as_user(people["bob"]))
    line = one_error_line(res)
    assert f"belongs to {ALICE}" in line, line
    assert res.stdout == "", "nothing of alice's may be shown"
    assert _snapshot(cluster) == before


def test_another_user_may_see_alices_status_and_list(cluster, people, alices):  # noqa: ANN001
    bob = as_user(people["bob"])
    for target in ("running", "failed", "running_batch"):
        res = cluster.client("--status", alices[target], "--json", env=bob)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc.get("task_id", doc.get("batch_id")) == alices[target]
    res = cluster.client("--list", "--limit", "0", "--json", env=bob)
    assert res.returncode == 0, res.stderr
    listed = {t["task_id"]: t["owner"] for t in json.loads(res.stdout)["tasks"]}
    assert listed[alices["running"]] == listed[alices["failed"]] == ALICE


def test_the_owner_may_read_her_own_logs(cluster, people, alices):  # noqa: ANN001
    res = cluster.client("--logs", alices["failed"], env=as_user(people["alice"]))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "alice-private-output\n"


def test_an_admin_may_kill_read_and_retry_alices_work_which_stays_hers(cluster, people):  # noqa: ANN001
    alice = people["alice"]
    res = cluster.client("--wait", "--", "sh", "-c", "echo for-the-admin; exit 4", env=as_user(alice))
    assert res.returncode == 4, res.stderr
    failed = res.stdout.splitlines()[0].strip()
    running = submitted(cluster, "--", "sleep", "300", token=alice)
    batch = submitted(cluster, "--array", "1-2", "--", "sleep", "300", token=alice)
    cluster.wait_state(running, "running")
    wait_batch_state(cluster, batch, "running", count=2)

    # the admin is the config's own token (the token file), no environment needed
    res = cluster.client("--logs", failed)
    assert (res.returncode, res.stdout) == (0, "for-the-admin\n"), res.stderr
    assert cluster.client("--kill", running).returncode == 0
    assert cluster.client("--kill", batch).returncode == 0
    cluster.wait_state(running, "killed")
    wait_batch_state(cluster, batch, "killed", count=2)

    for original, count in ((failed, 1), (batch, 2)):
        res = cluster.client("--retry-failed", original)
        assert res.returncode == 0, res.stderr
        retried = batch_rows(cluster, res.stdout.splitlines()[0].strip())
        assert len(retried) == count
        assert {r["owner"] for r in retried} == {ALICE}, "a retried task stays its owner's"
    for row in cluster.query("SELECT * FROM tasks WHERE task_id = ? OR batch_id = ?", failed, batch):
        assert row["owner"] == ALICE


def test_list_by_user_shows_only_that_users_tasks(cluster, people, alices):  # noqa: ANN001
    submitted(cluster, "--", "true", token=people["bob"])
    submitted(cluster, "--", "true")  # the admin's
    for name in (ALICE, "bob", getpass.getuser()):
        res = cluster.client("--list", "--user", name, "--limit", "0", "--json")
        assert res.returncode == 0, res.stderr
        listed = {t["task_id"] for t in json.loads(res.stdout)["tasks"]}
        assert listed == {r["task_id"] for r in cluster.query("SELECT task_id FROM tasks WHERE owner = ?", name)}
        assert listed, f"{name} has tasks"
    res = cluster.client("--list", "--user", ALICE, env=as_user(people["bob"]))
    assert res.returncode == 0, res.stderr
    shown = {line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip() and not line.startswith("(")}
    assert shown and shown <= {r["task_id"][:8] for r in cluster.query("SELECT task_id FROM tasks WHERE owner = ?", ALICE)}


# ---- 5. a runner's key -----------------------------------------------------------------------
class RefusalCounter:
    """A TCP relay between a runner and the host that counts the host's 401 answers, so that a
    test can wait for several refused rounds instead of sleeping."""

    STATUS = b"HTTP/1.1 401 "

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.refused = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if answers:  # a status line split across two reads is counted once
                    window = tail + data
                    with self._lock:
                        self.refused += window.count(self.STATUS)
                    tail = window[-(len(self.STATUS) - 1):]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.server.close()


def _start_runner_through(cluster: LocalCluster, relay: RefusalCounter, name: str, key_file: Path) -> Proc:
    """A runner whose host is the relay and whose key is `key_file` (not the host's own file)."""
    tmp = cluster.root / f"tmp-{name}"
    tmp.mkdir(exist_ok=True)
    sections = {k: dict(v) for k, v in cluster.base.items()}
    sections["network"]["host_port"] = relay.port
    sections["paths"]["local_temp_dir"] = str(tmp)
    sections["auth"]["cluster_key_file"] = str(key_file)
    sections["runner"] = {"node_name": name, "cores": 1}
    config = write_toml(cluster.root / f"runner-{name}.toml", sections)
    proc = Proc(f"runner-{name}", program("runner") + ["--config", str(config)], cluster.root / f"runner-{name}.log")
    cluster.runners[name] = proc
    cluster.procs.append(proc)
    return proc


_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) ")


@pytest.mark.parametrize("key", ["missing", "empty", "wrong"])
def test_a_runner_with_a_bad_key_says_so_once_and_joins_once_it_is_fixed(fresh_cluster, key):  # noqa: ANN001
    c = fresh_cluster
    c.start_host()
    key_file = c.root / "node-auth" / "cluster.key"
    if key != "missing":
        key_file.parent.mkdir(mode=0o700)
        key_file.write_text("" if key == "empty" else "not-the-cluster-key\n")
        key_file.chmod(0o600)
    relay = RefusalCounter(c.port)
    try:
        runner = _start_runner_through(c, relay, "k", key_file)
        pid = runner.pid
        # several refused rounds (the heartbeat and report loops retry about once a second)
        wait_until(lambda: relay.refused >= 6, 30, "six refused requests of the runner")
        assert runner.alive()
        assert "k" not in c.nodes()
        res = c.client("--list-nodes", "--json")
        assert res.returncode == 0 and "k" not in {n["name"] for n in json.loads(res.stdout)}, res.stderr
        lines = runner.log.read_text().splitlines()
        problems = [line for line in lines if _PROBLEM.search(line)]
        assert len(problems) == 1, "\n".join(lines)
        assert "cluster key" in problems[0] and str(key_file) in problems[0], problems[0]
        assert "Traceback" not in runner.log.read_text()

        # the administrator copies the right key in: the same process joins
        key_file.parent.mkdir(mode=0o700, exist_ok=True)
        key_file.write_text(c.cluster_key + "\n")
        key_file.chmod(0o600)
        c.wait_online("k")
        assert runner.alive() and runner.pid == pid
        res = c.client("--node", "k", "--wait", "--", "echo", "joined")
        assert res.returncode == 0, res.stderr
        problems = [line for line in runner.log.read_text().splitlines() if _PROBLEM.search(line)]
        assert len(problems) == 1, "no more complaints once the key is right"
    finally:
        relay.close()


# ---- 6. the client's messages ----------------------------------------------------------------
def test_a_client_without_a_token_says_where_it_looked(cluster, tmp_path):  # noqa: ANN001
    missing = tmp_path / "nowhere" / "token"
    sections = {k: dict(v) for k, v in cluster.base.items()}
    sections["auth"]["token_file"] = str(missing)
    config = write_toml(tmp_path / "no-token.toml", sections)
    for args in (["--list"], ["--list-nodes"], ["--", "true"]):
        res = cluster.client(*args, config=config)
        line = one_error_line(res)
        assert str(missing) in line and "HAKURIVER_TOKEN" in line, line
        assert res.stdout == ""


def test_a_client_with_a_wrong_token_says_which_token_was_refused(cluster, tmp_path):  # noqa: ANN001
    res = cluster.client("--list", env=as_user("0123456789abcdef.wrong-secret"))
    line = one_error_line(res)
    assert "refused the token in HAKURIVER_TOKEN" in line, line
    # and a wrong token in the token file names that file
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef.wrong-secret\n")
    token_file.chmod(0o600)
    sections = {k: dict(v) for k, v in cluster.base.items()}
    sections["auth"]["token_file"] = str(token_file)
    config = write_toml(tmp_path / "wrong-token.toml", sections)
    line = one_error_line(cluster.client("--list", config=config))
    assert f"refused the token in {token_file}" in line, line


def test_the_token_in_the_environment_comes_before_the_token_file(cluster, people):  # noqa: ANN001
    res = cluster.client("--", "true", env=as_user(people["bob"]))
    assert res.returncode == 0, res.stderr
    assert cluster.task(res.stdout.splitlines()[0].strip())["owner"] == "bob"

