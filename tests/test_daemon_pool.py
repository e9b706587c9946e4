"""DaemonThreadPool.call: the worker's way onto its handler and store threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from redbatch.daemon_pool import DaemonThreadPool


def test_a_burst_finished_before_the_loop_looks_is_one_handover() -> None:
    async def main() -> int:
        pool = DaemonThreadPool(4, thread_name_prefix="test-pool")
        handovers = 0
        hand_over = pool._hand_over

        def counted() -> None:
            nonlocal handovers
            handovers += 1
            hand_over()

        pool._hand_over = counted  # type: ignore[method-assign]
        done = threading.Barrier(5)

        def work(n: int) -> int:
            done.wait(10)  # all four calls have run before this returns
            return n

        futures = [pool.call(work, n) for n in range(4)]
        # The loop is blocked (nothing awaited) until every call has run and queued its
        # outcome: the first to finish schedules the one handover, the others join it.
        done.wait(10)
        deadline = asyncio.get_running_loop().time() + 10
        while len(pool._finished) < 4 and asyncio.get_running_loop().time() < deadline:
            threading.Event().wait(0.001)  # a bounded poll of the outcome list, loop blocked
        assert await asyncio.gather(*futures) == [0, 1, 2, 3]
        pool.shutdown()
        return handovers

    assert asyncio.run(main()) == 1


def test_exceptions_reach_the_awaiting_coroutine() -> None:
    async def main() -> None:
        pool = DaemonThreadPool(2, thread_name_prefix="test-pool")

        def fails() -> None:
            raise KeyError("nope")

        def stops() -> None:
            raise StopIteration

        with pytest.raises(KeyError):
            await pool.call(fails)
        with pytest.raises(RuntimeError, match="StopIteration"):  # an asyncio future refuses it
            await pool.call(stops)
        pool.shutdown()

    asyncio.run(main())


def test_a_call_cancelled_before_a_thread_takes_it_never_runs() -> None:
    async def main() -> list[str]:
        pool = DaemonThreadPool(1, thread_name_prefix="test-pool")
        ran: list[str] = []
        gate = threading.Event()
        first = pool.call(gate.wait, 10)
        second = pool.call(ran.append, "second")
        second.cancel()
        gate.set()
        await first
        third = pool.call(ran.append, "third")  # the one thread has passed the cancelled call
        await third
        pool.shutdown()
        return ran

    assert asyncio.run(main()) == ["third"]


def test_shutdown_cancels_calls_not_yet_taken() -> None:
    async def main() -> bool:
        pool = DaemonThreadPool(1, thread_name_prefix="test-pool")
        gate = threading.Event()
        first = pool.call(gate.wait, 10)
        queued = pool.call(lambda: None)
        pool.shutdown(wait=False, cancel_futures=True)
        gate.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        return queued.cancelled()

    assert asyncio.run(main())


def test_call_then_hands_each_outcome_to_its_callback_on_the_loop() -> None:
    async def main() -> None:
        pool = DaemonThreadPool(2, thread_name_prefix="test-pool")
        loop_thread = threading.get_ident()
        outcomes: list[tuple[str, object, bool]] = []
        both = asyncio.Event()

        def then(label: str) -> Callable[[BaseException | None, object], None]:
            def record(exc: BaseException | None, result: object) -> None:
                outcomes.append(
                    (label, exc if exc is not None else result, threading.get_ident() == loop_thread)
                )
                if len(outcomes) == 3:
                    both.set()
                if label == "bad callback":
                    raise ValueError("a callback's own failure")

            return record

        def fails() -> int:
            raise KeyError("nope")

        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(context["exception"])
        )
        pool.call_then(lambda: 7, then("value"))
        pool.call_then(fails, then("error"))
        pool.call_then(lambda: 8, then("bad callback"))
        await asyncio.wait_for(both.wait(), 10)
        pool.shutdown()
        by_label = {label: (outcome, on_loop) for label, outcome, on_loop in outcomes}
        assert by_label["value"] == (7, True)
        assert isinstance(by_label["error"][0], KeyError) and by_label["error"][1]
        assert by_label["bad callback"] == (8, True)
        assert [type(e) for e in errors] == [ValueError]  # reported, and the others still went out

    asyncio.run(main())
