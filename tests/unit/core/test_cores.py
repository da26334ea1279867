from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hakuriver.core.cores import CoreSet, format_core_ids, parse_core_ids


def test_take_gives_the_lowest_free_ids_and_give_back_frees_them():
    cs = CoreSet([3, 1, 2, 0])
    assert cs.take(2) == (0, 1)
    assert cs.take(1) == (2,)
    cs.give_back((0, 1))
    assert cs.take(3) == (0, 1, 3)
    assert cs.free_count == 0


def test_cannot_take_more_than_free_or_zero():
    cs = CoreSet(range(2))
    with pytest.raises(ValueError):
        cs.take(3)
    with pytest.raises(ValueError):
        cs.take(0)


def test_give_back_of_a_free_core_is_an_error():
    cs = CoreSet(range(2))
    with pytest.raises(ValueError):
        cs.give_back((1,))


def test_take_exact_only_when_all_free():
    cs = CoreSet(range(4))
    assert cs.take_exact((1, 2))
    assert not cs.take_exact((2, 3))
    assert cs.free_ids() == (0, 3)


def test_format_and_parse_round_trip():
    assert format_core_ids((2, 3)) == "2,3"
    assert parse_core_ids("2,3") == (2, 3)
    assert parse_core_ids("") == ()


@given(total=st.integers(1, 16), ops=st.lists(st.tuples(st.booleans(), st.integers(1, 16)), max_size=60))
def test_random_take_and_give_back_never_overlap(total, ops):
    cs = CoreSet(range(total))
    held: list[tuple[int, ...]] = []
    for take, n in ops:
        if take and n <= cs.free_count:
            held.append(cs.take(n))
        elif held:
            cs.give_back(held.pop(n % len(held)))
        taken = [c for ids in held for c in ids]
        assert len(taken) == len(set(taken))
        assert len(taken) + cs.free_count == total
        assert not set(taken) & set(cs.free_ids())
