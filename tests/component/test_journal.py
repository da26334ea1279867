"""The runner journal: replay after a crash, a torn last line, compaction, read-only peeking."""

from __future__ import annotations

from hakuriver import protocol as p
from hakuriver.runner import journal as j
from hakuriver.runner.journal import Journal, TaskRecord


def record(task_id: str) -> TaskRecord:
    return TaskRecord(task_id, 1.0, f"/o/{task_id}", f"/e/{task_id}", f"/t/{task_id}")


def test_replay_gives_back_live_records_and_unacknowledged_results(tmp_path):
    path = str(tmp_path / "state" / "journal")
    first = Journal(path)
    for t in ("a", "b", "c", "d"):
        first.launched([record(t)])
    first.killing("b")
    first.finished([p.TaskFinished("c", 2.0, exit_code=3)])
    first.finished([p.TaskFinished("d", 2.0, exit_code=0)])
    first.acked(["d"])
    # a crash: no close, no flush beyond the appends themselves
    again = Journal(path)
    assert set(again.records) == {"a", "b"} and again.records["b"].killing
    assert set(again.results) == {"c"} and again.results["c"].exit_code == 3
    assert again.records["a"].pid == 0  # pids are never journaled: a restarted runner looks them up


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "journal"
    first = Journal(str(path))
    first.launched([record("a")])
    with open(path, "ab") as fh:
        fh.write(b'F {"task_id": "a", "finis')  # the crash came mid-write
    again = Journal(str(path))
    assert set(again.records) == {"a"} and again.results == {}


def test_compaction_keeps_exactly_the_live_state(tmp_path, monkeypatch):
    monkeypatch.setattr(j, "COMPACT_SLACK", 10)
    path = tmp_path / "journal"
    jr = Journal(str(path))
    for i in range(50):
        jr.launched([record(f"t{i}")])
        jr.finished([p.TaskFinished(f"t{i}", 2.0, exit_code=0)])
        jr.acked([f"t{i}"])
    jr.launched([record("live")])
    jr.finished([p.TaskFinished("done", 2.0, exit_code=1)])
    assert len(path.read_bytes().splitlines()) < 20  # rewritten along the way
    records, results = Journal.peek(str(path))
    assert set(records) == {"live"} and set(results) == {"done"}


def test_peek_does_not_touch_the_file(tmp_path):
    path = tmp_path / "journal"
    jr = Journal(str(path))
    jr.launched([record("a")])
    before = path.read_bytes()
    Journal.peek(str(path))
    assert path.read_bytes() == before
