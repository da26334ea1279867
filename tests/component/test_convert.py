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
