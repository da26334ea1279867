"""The host's conversions of new submissions: IDs and fields."""

from __future__ import annotations

import uuid

from hakuriver import protocol as p
from hakuriver.host import convert


def test_new_ids_are_distinct_canonical_version_4_uuids() -> None:
    ids = convert.new_ids(2000)
    assert len(set(ids)) == 2000
    for some_id in ids:
        parsed = uuid.UUID(some_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == some_id  # lower case, with dashes: as the API and the prefix lookup expect
        assert p.is_task_id(some_id)


def test_tasks_from_specs_give_each_task_its_own_id_and_the_submission_facts() -> None:
    specs = [p.TaskSpec(command="/bin/echo", args=[str(i)], env={"I": str(i)}) for i in range(3)]
    tasks = convert.tasks_from_specs(specs, 12.5, "b", "alice")
    assert len({t.task_id for t in tasks}) == 3
    assert [t.args for t in tasks] == [["0"], ["1"], ["2"]]
    assert [t.env for t in tasks] == [{"I": "0"}, {"I": "1"}, {"I": "2"}]
    assert {(t.submitted_at, t.batch_id, t.owner) for t in tasks} == {(12.5, "b", "alice")}
    assert convert.new_ids(0) == []


def test_the_tasks_of_a_submission_share_their_equal_strings_and_own_their_containers() -> None:
    # decoded as the host receives them: each spec's strings are objects of their own
    body = p.encode(p.SubmitRequest([p.TaskSpec("/bin/echo", ["--n", str(i)], {"HAKURIVER_ARRAY_INDEX": str(i)},
                                                cwd="/home/ann/sweep") for i in range(3)], batch=True))
    specs = p.decode(body, p.SubmitRequest).tasks
    assert specs[0].command is not specs[1].command and specs[0].args[0] is not specs[1].args[0]
    tasks = convert.tasks_from_specs(specs, 1.0, "b", "ann")
    assert [(t.command, t.cwd, t.args, t.env) for t in tasks] == [
        ("/bin/echo", "/home/ann/sweep", ["--n", str(i)], {"HAKURIVER_ARRAY_INDEX": str(i)}) for i in range(3)]
    first, second = tasks[0], tasks[1]
    assert first.command is second.command and first.cwd is second.cwd and first.args[0] is second.args[0]
    # the containers stay each task's own, and the spec's own too
    assert first.args is not second.args and first.env is not second.env and first.after is not second.after
    assert first.args is not specs[0].args and first.env is not specs[0].env
