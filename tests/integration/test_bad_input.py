"""SPEC §8: every bad input gets one clear line, a non-zero exit, and changes nothing."""

from __future__ import annotations

import http.client
import json
import uuid

import pytest

from support import program, write_toml


def _one_line_error(res, code: int = 2) -> str:  # noqa: ANN001
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("hakuriver.client: error: ")
    return lines[0]


def _count(cluster) -> int:  # noqa: ANN001
    return cluster.query("SELECT COUNT(*) AS n FROM tasks")[0]["n"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cores", "0", "--", "true"], "--cores must be a whole number >= 1, got 0"),
        (["--cores", "-1", "--", "true"], "--cores must be a whole number >= 1, got -1"),
        (["--cores", "abc", "--", "true"], "--cores must be a whole number >= 1, got 'abc'"),
        (["--cores", "1"], "no command given"),
        (["--", ""], "the command is empty"),
        (["--env", "NOEQUALS", "--", "true"], "--env expects NAME=VALUE, got 'NOEQUALS'"),
        (["--env", "1BAD=x", "--", "true"], "invalid variable name '1BAD'"),
        (["--env", "BAD-NAME=x", "--", "true"], "invalid variable name 'BAD-NAME'"),
        (["--status", "not-a-uuid"], "malformed ID 'not-a-uuid'"),
        (["--kill", "12345"], "malformed ID '12345'"),
        (["--list-nodes", "--status", str(uuid.UUID(int=1))], "not allowed with argument"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    ],
)
def test_bad_client_flags(cluster, args, message):
    before = _count(cluster)
    line = _one_line_error(cluster.client(*args))
    assert message in line
    assert _count(cluster) == before


def test_more_cores_than_any_node(cluster):
    before = _count(cluster)
    line = _one_line_error(cluster.client("--cores", "99", "--", "true"), code=1)
    assert "largest node (a) has 4 cores" in line
    assert _count(cluster) == before


def test_unknown_node(cluster):
    line = _one_line_error(cluster.client("--node", "zz", "--", "true"), code=1)
    assert "unknown node 'zz' (known nodes: a, b)" in line


def test_unknown_task_id_for_kill(cluster):
    unknown = str(uuid.uuid4())
    assert _one_line_error(cluster.client("--kill", unknown), code=1).endswith(f"no task or batch with ID {unknown}")


def test_unreachable_host_names_the_url(cluster, tmp_path):
    config = write_toml(tmp_path / "elsewhere.toml", {"network": {"host_port": 9, "host_reachable_address": "127.0.0.1"}})
    line = _one_line_error(cluster.client("--list-nodes", config=config), code=1)
    assert "cannot reach the host at http://127.0.0.1:9" in line


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.toml", None, "does not exist"),
        ("bad.toml", "[network\nhost_port = 1", "is not valid TOML"),
        ("unknown.toml", "[network]\nhots_port = 1\n", "unknown key network.hots_port"),
        ("section.toml", "[netwrk]\nhost_port = 1\n", "unknown section [netwrk]"),
        ("type.toml", "[network]\nhost_port = \"8000\"\n", "network.host_port must be a whole number"),
        ("range.toml", "[timing]\nheartbeat_interval = -1\n", "timing.heartbeat_interval must be a number of seconds > 0"),
    ],
)
def test_bad_config_files_for_every_program(cluster, tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    import subprocess

    for prog in ("client", "host", "runner"):
        res = subprocess.run(program(prog) + ["--config", str(path), *(["--list-nodes"] if prog == "client" else [])],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 2, (prog, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], (prog, res.stderr)


def _post(cluster, path: str, body: bytes, method: str = "POST") -> tuple[int, dict]:  # noqa: ANN001
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        secret = cluster.cluster_key if path.startswith("/api/runner/") else cluster.token
        conn.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                       "Authorization": f"Bearer {secret}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/api/tasks", b"{not json", 400),
        ("/api/tasks", b"[]", 400),
        ("/api/tasks", b'{"tasks": [{"command": 5}]}', 400),
        ("/api/tasks", b'{"tasks": [{"args": ["x"]}]}', 400),
        ("/api/tasks", b'{"tasks": [{"command": "true", "cores": "two"}]}', 400),
        ("/api/tasks", b'{"tasks": [{"command": "true", "cores": 0}]}', 400),
        ("/api/tasks", b'{"tasks": [{"command": "true", "env": {"A B": "x"}}]}', 400),
        ("/api/tasks", b'{"tasks": []}', 400),
        ("/api/tasks", b'{"tasks": [{"command": "true", "cores": 1000}]}', 422),
        ("/api/runner/heartbeat", b'{"node": {"name": 3}}', 400),
        ("/api/runner/report", b'{"node": "a", "finished": [{"task_id": 1}]}', 400),
        ("/api/tasks/zzz", b"", 400),
    ],
)
def test_bad_bodies_sent_straight_to_the_api(cluster, path, body, status):
    before = _count(cluster)
    method = "GET" if path.startswith("/api/tasks/") else "POST"
    code, reply = _post(cluster, path, body, method)
    assert code == status
    assert isinstance(reply.get("error"), str) and reply["error"]
    assert _count(cluster) == before
    assert cluster.host.alive()


def test_huge_body_is_refused_and_the_host_lives(cluster):
    before = _count(cluster)
    huge = b'{"tasks": [{"command": "' + b"x" * (33 * 1024 * 1024) + b'"}]}'
    code, reply = _post(cluster, "/api/tasks", huge)
    assert code == 413 and "too large" in reply["error"]
    assert _count(cluster) == before
    assert cluster.client("--list-nodes").returncode == 0
