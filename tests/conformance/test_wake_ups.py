"""Wake-ups: a step that makes a key due sooner than any worker expects wakes the waiters.

The rule is ``redbatch.engine.wakes``: due now, or due before the head of the deadline index.
A worker sleeps until that head, so a step that misses a wake-up delays the key until then.
"""

from __future__ import annotations

import time

import pytest

from redbatch.stores.base import Store, Waiter
from tests.conformance.helpers import ack, claim_one, fail, make
from tests.conftest import FakeClock

BOUND = 2.0  # seconds a wake-up may take to arrive; without it the wait times out


def woken_within(waiter: Waiter, bound: float) -> bool:
    """Whether ``waiter`` is woken within ``bound`` seconds. A wait may end early without a
    wake-up (a Redis waiter's does on its subscription's confirmations): wait again then."""
    deadline = time.monotonic() + bound
    while (left := deadline - time.monotonic()) > 0:
        if waiter.wait(left):
            return True
    return False


def live_waiter(store: Store, name: str, clock: FakeClock) -> Waiter:
    """A waiter on ``name`` known to be listening: it has seen a wake-up from another batcher.

    A Redis waiter subscribes on its first wait, so a wake-up sent before it is lost; this
    synchronises on one rather than sleeping.
    """
    waiter = store.waiter([name, "sync"])
    waiter.wait(0)
    make(store, clock, "sync").add("x", 1)  # the first key of an empty index: wakes
    assert woken_within(waiter, BOUND), "the waiter never heard the first wake-up"
    return waiter


@pytest.mark.parametrize("ending", ["ack", "fail_dead"])
def test_a_batch_whose_key_is_next_due_before_every_other_wakes_a_waiter_when_it_ends(
    store: Store, clock: FakeClock, ending: str
) -> None:
    b = make(store, clock, max_items=10, max_wait=4, lease=10)
    start = clock.now
    b.add("k", 1)
    clock.advance(4)
    running = claim_one(b)  # k is indexed at its lease, start + 14 s
    b.add("k", 2)  # pending behind the running batch: due at start + 8 s once it ends
    clock.advance(1)
    b.add("other", 3)  # due at start + 9 s: the head of the index while k runs
    assert store.next_due_ms(b.spec) == start + 9000
    waiter = live_waiter(store, b.name, clock)
    try:
        # k is next due at start + 8 s: before the head, and not due now
        assert ack(b, running) if ending == "ack" else fail(b, running, retry_in=None)
        assert store.next_due_ms(b.spec) == start + 8000 > clock.now
        assert woken_within(waiter, BOUND), "a worker sleeping until start + 9 s was not woken"
    finally:
        waiter.close()
