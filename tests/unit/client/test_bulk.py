"""--array and --file copy every field of the spec the flags built, including fields added later."""

from __future__ import annotations

import pytest

from hakuriver import protocol as p
from hakuriver.client import bulk

# a value other than the default for every TaskSpec field; a new field must be added here,
# and the test below fails until it is (so a new flag cannot be dropped silently)
NON_DEFAULT = {"command": "run", "args": ["--x"], "env": {"A": "1"}, "cores": 3, "cwd": "/work", "node": "n1",
               "name": "job-{}", "time_limit": 90.0, "retries": 2, "after": ["0123abcd"], "throttle": 4}
#: the fields the bulk paths derive per task, and how
PER_TASK = {"command", "args", "env", "name"}


def test_the_table_covers_every_field():
    assert set(NON_DEFAULT) == set(p.TaskSpec._fields)


def _copied(spec: p.TaskSpec) -> dict:
    return {f: getattr(spec, f) for f in p.TaskSpec._fields if f not in PER_TASK}


@pytest.mark.parametrize("how", ["array", "file"])
def test_every_spec_field_survives(how):
    base = p.TaskSpec(**NON_DEFAULT)
    if how == "array":
        specs = bulk.array_specs(base, [4, 5])
        assert [s.name for s in specs] == ["job-4", "job-5"]
        assert [s.env for s in specs] == [{"A": "1", bulk.ARRAY_INDEX: "4"}, {"A": "1", bulk.ARRAY_INDEX: "5"}]
    else:
        specs = bulk.file_specs(base, ["# comment", "echo 1", "", "echo '2 3'"], "cmds.txt")
        assert [s.name for s in specs] == ["job-2", "job-4"]  # line numbers
        assert [[s.command, *s.args] for s in specs] == [["echo", "1"], ["echo", "2 3"]]
        assert [s.env for s in specs] == [{"A": "1"}, {"A": "1"}]
    assert all(_copied(s) == _copied(base) for s in specs)


def test_array_braces_in_the_command_become_the_index():
    [spec] = bulk.array_specs(p.TaskSpec("echo", ["in-{}.txt"]), [7])
    assert (spec.command, spec.args, spec.name) == ("echo", ["in-7.txt"], "")


@pytest.mark.parametrize("text, indices, throttle", [
    ("1-4", [1, 2, 3, 4], 0), ("1-4%2", [1, 2, 3, 4], 2), ("0-9:3%1", [0, 3, 6, 9], 1), ("1,5%3", [1, 5], 3),
])
def test_an_array_range_may_end_in_a_throttle(text, indices, throttle):
    assert bulk.parse_array(text) == (indices, throttle)


@pytest.mark.parametrize("text", ["1-4%0", "1-4%", "1-4%x", "1-4%-1", "1%2%3"])
def test_a_bad_throttle_is_refused(text):
    with pytest.raises(bulk.BulkError, match="%K"):
        bulk.parse_array(text)
