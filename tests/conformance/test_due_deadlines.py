"""``due_deadlines``: what a worker reads to share its free slots earliest deadline first."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from redbatch.stores.base import Store
from redbatch.stores.memory import _Queue
from tests.conformance.helpers import claim, make
from tests.conftest import FakeClock


def test_due_deadlines_are_the_earliest_due_scores_in_ascending_order(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=3, max_wait=5, lease=10)
    assert store.due_deadlines(b.spec, clock.now, 10) == []
    start = clock.now
    for key in ("c", "a", "b", "d"):  # due at start + 5, 6, 7 and 8 s
        b.add(key, key)
        clock.advance(1)
    clock.advance(3)
    assert store.due_deadlines(b.spec, clock.now, 10) == [start + 5000, start + 6000, start + 7000]
    assert store.due_deadlines(b.spec, clock.now, 2) == [start + 5000, start + 6000]

    b.add_many([("d", 1), ("d", 2)])  # full: due now, no longer at start + 8 s
    assert [c.lease.key for c in claim(b, limit=1)] == ["c"]  # leased until start + 17 s
    clock.advance(2)  # past d's old deadline, which must not show twice
    assert store.due_deadlines(b.spec, clock.now, 10) == [start + 6000, start + 7000, start + 7000]

    clock.now = start + 17_000  # c's lease lapsed: it is due again, to be reclaimed
    assert store.due_deadlines(b.spec, clock.now, 10) == [
        start + 6000, start + 7000, start + 7000, start + 17_000,
    ]  # fmt: skip
    assert store.due_deadlines(b.spec, clock.now, 1) == [start + 6000]


def test_due_deadlines_read_one_batcher_only(store: Store, clock: FakeClock) -> None:
    one, other = make(store, clock, "one", max_wait=1), make(store, clock, "other", max_wait=1)
    one.add("k", 1)
    clock.advance(1)
    other.add("k", 1)
    assert store.due_deadlines(one.spec, clock.now, 10) == [clock.now]
    assert store.due_deadlines(other.spec, clock.now, 10) == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 50) | st.none()), max_size=60),
    st.integers(0, 50),
    st.integers(0, 10),
)
def test_the_memory_stores_lazy_heap_yields_the_same_as_a_sort(
    steps: list[tuple[str, int | None]], now_ms: int, limit: int
) -> None:
    queue = _Queue()
    for key, score in steps:  # reschedule (leaving stale heap entries) or forget a key
        if score is None:
            queue.due.pop(key, None)
        else:
            queue.schedule(key, score)
    expected = sorted(s for s in queue.due.values() if s <= now_ms)[:limit]
    assert queue.due_scores(now_ms, limit) == expected
