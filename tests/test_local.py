"""The wake-ups the in-process stores share (stores/local.py); SQLite's polling is tested with it."""

from __future__ import annotations

import threading
import time

from redbatch.stores.local import LocalWaiter, Wakeups
from redbatch.stores.memory import MemoryStore
from redbatch.types import Entry, QueueSpec
from tests.conformance.test_worker import DEADLINE

SPEC = QueueSpec("b", max_items=2, max_wait_ms=1000, idle_ms=0, dedupe=False, max_attempts=2, lease_ms=500)


def test_a_notify_before_the_wait_is_not_missed() -> None:
    wakeups = Wakeups()
    waiter = LocalWaiter(wakeups)
    assert waiter.wait(0.01) is False
    wakeups.notify()
    assert waiter.wait(DEADLINE) is True
    assert waiter.wait(0.01) is False  # seen once only


def test_closing_from_another_thread_ends_the_wait() -> None:
    waiter = LocalWaiter(Wakeups())
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.wait(DEADLINE)))
    thread.start()
    time.sleep(0.05)  # let it block; correctness does not depend on it
    started = time.monotonic()
    waiter.close()
    thread.join(DEADLINE)
    assert result == [False] and time.monotonic() - started < 1
    assert waiter.wait(DEADLINE) is False


def test_a_polling_waiter_is_woken_by_what_it_polls() -> None:
    class Polling(LocalWaiter):
        poll_seconds = 0.005
        polls = 0

        def changed(self) -> bool:
            self.polls += 1
            return self.polls == 3

    waiter = Polling(Wakeups())
    started = time.monotonic()
    assert waiter.wait(DEADLINE) is True
    assert waiter.polls == 3 and time.monotonic() - started < 1


def test_the_memory_store_wakes_its_waiter_when_a_key_becomes_due() -> None:
    store = MemoryStore()
    waiter = store.waiter([SPEC.name])
    store.append(SPEC, [Entry("k", b"1", "")], 0)  # due at 1000, the index was empty: wakes
    assert waiter.wait(DEADLINE) is True
    store.append(SPEC, [Entry("other", b"1", "")], 10)  # due at 1010, after the head: no wake-up
    assert waiter.wait(0.01) is False
    store.append(SPEC, [Entry("other", b"2", "")], 20)  # full: due now
    assert waiter.wait(DEADLINE) is True
    waiter.close()
