"""The coalescer's own edges: interrupted callers, interrupted leaders, forks."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from redbatch import StoreUnavailable
from redbatch.coalesce import Coalescer
from redbatch.types import Entry
from tests.conformance.test_worker import DEADLINE, wait_until


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt, without pytest taking it for the user's Ctrl-C."""


class GatedSend:
    """A store call that records what it sent and blocks while the gate is closed."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.raise_at: dict[int, BaseException] = {}
        """Exceptions to raise from the n-th call (counting from 1)."""
        self.hold_at: dict[int, threading.Event] = {}
        """Events the n-th call waits for, past the gate."""

    def __call__(self, entries: list[Entry]) -> None:
        self.sent.append([e.payload for e in entries])
        number = len(self.sent)
        assert self.gate.wait(DEADLINE)
        if number in self.hold_at:
            assert self.hold_at[number].wait(DEADLINE)
        if number in self.raise_at:
            raise self.raise_at[number]


def entry(n: int) -> list[Entry]:
    return [Entry("k", b"%d" % n, "")]


@pytest.fixture
def send() -> Iterator[GatedSend]:
    sender = GatedSend()
    yield sender
    sender.gate.set()


def leader(coalescer: Coalescer, send: GatedSend, n: int) -> threading.Thread:
    """A caller on its own thread, returned once its call is on its way (and held there)."""
    send.gate.clear()
    calls = len(send.sent)
    thread = threading.Thread(target=coalescer.submit, args=(entry(n),), daemon=True)
    thread.start()
    wait_until(lambda: len(send.sent) == calls + 1)
    return thread


def test_an_interrupted_waiting_caller_leaves_the_queue_working(send: GatedSend) -> None:
    coalescer = Coalescer(send)
    first = leader(coalescer, send, 1)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    main = threading.get_ident()
    killer = threading.Thread(
        target=lambda: (wait_until(lambda: coalescer.queued == 2), signal.pthread_kill(main, signal.SIGUSR1))
    )
    try:
        killer.start()
        with pytest.raises(Interrupted):
            coalescer.submit(entry(2))  # waits behind the call on its way, interrupted there
    finally:
        killer.join(DEADLINE)
        signal.signal(signal.SIGUSR1, previous)
    assert coalescer.queued == 1  # it withdrew: its item was never sent
    send.gate.set()
    first.join(DEADLINE)
    coalescer.submit(entry(3))  # nothing is left waiting for a leader that is gone
    assert send.sent == [[b"1"], [b"3"]] and coalescer.queued == 0


def test_an_interrupted_carried_caller_does_not_strand_the_callers_after_it(send: GatedSend) -> None:
    # The callers a call carried are woken one by the other (a chain): one interrupted while
    # its call is on its way must not leave the next waiting for a wake-up that never comes.
    coalescer = Coalescer(send)
    first = leader(coalescer, send, 0)
    second_call = threading.Event()
    send.hold_at[2] = second_call
    errors: list[BaseException] = []

    def add(n: int) -> None:
        try:
            coalescer.submit(entry(n))
        except BaseException as exc:
            errors.append(exc)

    second_leader = threading.Thread(target=add, args=(1,))
    second_leader.start()
    wait_until(lambda: coalescer.queued == 2)
    after = threading.Thread(target=add, args=(3,))

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    def interrupt_main_in_the_second_call() -> None:
        wait_until(lambda: coalescer.queued == 3)
        after.start()
        wait_until(lambda: coalescer.queued == 4)
        send.gate.set()  # the second call carries 1, 2 and 3, held on its way
        wait_until(lambda: len(send.sent) == 2)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    main = threading.get_ident()
    killer = threading.Thread(target=interrupt_main_in_the_second_call)
    try:
        killer.start()
        with pytest.raises(Interrupted):
            coalescer.submit(entry(2))
    finally:
        killer.join(DEADLINE)
        signal.signal(signal.SIGUSR1, previous)
        second_call.set()
    for thread in (first, second_leader, after):
        thread.join(DEADLINE)
        assert not thread.is_alive()
    assert errors == [] and sorted(send.sent[1]) == [b"1", b"2", b"3"] and coalescer.queued == 0
    coalescer.submit(entry(4))
    assert send.sent[-1] == [b"4"]


def test_the_callers_of_an_interrupted_call_get_store_unavailable(send: GatedSend) -> None:
    coalescer = Coalescer(send)
    first = leader(coalescer, send, 0)
    errors: dict[int, BaseException] = {}

    def add(n: int) -> None:
        try:
            coalescer.submit(entry(n))
        except BaseException as exc:
            errors[n] = exc

    callers = [threading.Thread(target=add, args=(n,)) for n in (1, 2, 3)]
    for caller in callers:
        caller.start()
    wait_until(lambda: coalescer.queued == 4)
    send.gate.set()
    first.join(DEADLINE)  # the second call carries 1, 2 and 3, led by one of them
    for caller in callers:
        caller.join(DEADLINE)
    assert errors == {} and sorted(send.sent[1]) == [b"1", b"2", b"3"]

    first = leader(coalescer, send, 4)
    callers = [threading.Thread(target=add, args=(n,)) for n in (5, 6)]
    for caller in callers:
        caller.start()
    wait_until(lambda: coalescer.queued == 3)
    send.raise_at[len(send.sent) + 1] = Interrupted()  # the next call's leader, in it
    send.gate.set()
    first.join(DEADLINE)
    for caller in callers:
        caller.join(DEADLINE)
    (led,) = [n for n in (5, 6) if isinstance(errors.get(n), Interrupted)]
    (other,) = {5, 6} - {led}
    assert isinstance(errors[other], StoreUnavailable)
    assert "interrupted (Interrupted) in another thread" in str(errors[other])
    assert coalescer.queued == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_does_not_wait_for_the_parents_call(send: GatedSend) -> None:
    coalescer = Coalescer(send)
    first = leader(coalescer, send, 1)  # held on its way: the child must not queue behind it
    pid = os.fork()
    if pid == 0:  # the child: one thread, this one
        signal.alarm(10)  # a hang ends the child, and the test with it
        send.gate = threading.Event()
        send.gate.set()
        try:
            coalescer.submit(entry(2))
            os._exit(0 if send.sent[-1] == [b"2"] else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    send.gate.set()
    first.join(DEADLINE)
