"""RunQueue: submission order however tasks join, and throttled batches held back without being walked."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hakuriver.core.queue import RunQueue


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400))
def test_iteration_is_in_rank_order_whatever_order_tasks_join_and_leave(steps):
    q, inside = RunQueue(), set()
    for join, rank in steps:
        task_id = f"t{rank}"
        if join and task_id not in inside:
            q.add(task_id, rank)
            inside.add(task_id)
        elif not join and task_id in inside:
            q.remove(task_id)
            inside.discard(task_id)
        assert list(q) == sorted(inside, key=lambda t: int(t[1:])) and len(q) == len(inside)


def test_a_throttled_batch_parks_what_has_no_place_and_admits_by_rank():
    q = RunQueue()
    for rank in (5, 1, 3, 2):
        q.add(f"t{rank}", rank, "b", throttle=2, running=0)
    assert list(q) == ["t1", "t5"] and q.parked() == {"t3", "t2"} and q.queued_in("b") == 2
    q.remove("t1")  # placed: it now holds cores, so the batch still has no place
    q.admit("b", 2, running=1)
    assert list(q) == ["t5"] and q.parked() == {"t3", "t2"}
    q.admit("b", 2, running=0)  # t1 ended: one place
    assert list(q) == ["t2", "t5"] and q.parked() == {"t3"}
    q.remove("t3")  # a parked task killed
    q.remove("t2")
    q.admit("b", 2, running=0)
    assert list(q) == ["t5"] and not q.parked() and q.queued_in("b") == 1


def test_unthrottled_tasks_are_never_parked():
    q = RunQueue()
    q.add("a", 1, "b", throttle=0, running=99)
    assert list(q) == ["a"] and not q.parked()
