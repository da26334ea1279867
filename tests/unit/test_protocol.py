from __future__ import annotations

import pytest

from hakuriver import protocol as p


@pytest.mark.parametrize(
    "message",
    [
        p.SubmitRequest(tasks=[p.TaskSpec("sh", ["-c", "echo $X"], {"X": "1"}, 2, "/w", "a")]),
        p.Heartbeat(node=p.NodeInfo("a", [0, 1], 1024), held=["x"], wait=5.0),
        p.Orders(launch=[p.LaunchOrder("t", "true", [], {}, [0])], kill=["u"]),
        p.Report("a", [p.TaskStarted("t", 1.0, "/o", "/e")], [p.TaskFinished("t", 2.0, 1, None, "", False, 1.0)]),
        p.Ack(["t"]),
    ],
)
def test_round_trip(message):
    assert p.decode(p.encode(message), type(message)) == message


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"tasks": [{"command": 1}]}', b'{"tasks": [{"cores": 1}]}', b'{"tasks": [{"command": "x", "env": []}]}'],
)
def test_bad_bodies_are_rejected(body):
    with pytest.raises(p.DecodeError):
        p.decode(body, p.SubmitRequest)


@pytest.mark.parametrize(
    "spec, problem",
    [
        (p.TaskSpec("true"), None),
        (p.TaskSpec("true", cores=0), "cores must be a whole number >= 1"),
        (p.TaskSpec("   "), "the command is empty"),
        (p.TaskSpec("true", env={"9X": "1"}), "invalid environment variable name '9X'"),
        (p.TaskSpec("true", env={"X": "a\0b"}), "may not contain NUL"),
        (p.TaskSpec("true", args=["a\0"]), "may not contain NUL"),
    ],
)
def test_spec_problem(spec, problem):
    found = p.spec_problem(spec)
    assert (found is None) if problem is None else (problem in found)


def test_task_ids_are_canonical_uuids():
    assert p.is_task_id("123e4567-e89b-12d3-a456-426614174000")
    assert not p.is_task_id("123e4567e89b12d3a456426614174000")
    assert not p.is_task_id("nope")
