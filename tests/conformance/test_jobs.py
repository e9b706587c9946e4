"""The jobs front door (``redbatch.Jobs``) with a real ``Worker``, on every store.

Workers run in threads on real time; tests synchronise on events, on ``Jobs.wait`` (which
polls the store with a deadline) and on deadlines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import redbatch
from redbatch import jobtypes
from redbatch.errors import ConfigError, InvalidItem, JobCancelled, NotFound
from redbatch.stores.base import Store
from tests.conftest import FakeClock

WAIT = 20.0


def make_jobs(store: Store, **kw: Any) -> redbatch.Jobs:
    settings: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.05, "lease": 5.0} | kw
    return redbatch.Jobs(store, "q", **settings)


@contextmanager
def worker(store: Store, *served: redbatch.Jobs | redbatch.Batcher, concurrency: int = 8) -> Iterator[None]:
    running = redbatch.Worker(store, list(served), concurrency=concurrency, handle_signals=False)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    assert running.started.wait(WAIT)
    try:
        yield
    finally:
        running.stop()
        thread.join(WAIT)
        assert not thread.is_alive()


def until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a store-side condition until it holds, failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_submit_get_list_counts_without_a_worker(store: Store) -> None:
    jobs = make_jobs(store)
    a = jobs.submit("f", {"n": 1}, id="a")
    b = jobs.submit("f", [1, 2], lane="high")
    assert a == "a" and b != a
    job = jobs.get("a")
    assert (job.status, job.function, job.lane, job.attempt, job.steps, job.result) == (
        "pending", "f", "normal", 0, 1, None,
    )  # fmt: skip
    assert not job.finished and job.created_at > 0
    assert jobs.counts()["pending"] == 2
    assert {j.id for j in jobs.list(status="pending").jobs} == {a, b}
    with pytest.raises(NotFound):
        jobs.get("nope")
    assert jobs.submit_many([("f", 1), ("g", 2)]) and jobs.counts()["pending"] == 4


def test_a_submitted_id_is_idempotent(store: Store) -> None:
    jobs = make_jobs(store)
    assert jobs.submit("f", 1, id="same") == jobs.submit("f", 2, id="same") == "same"
    assert jobs.counts()["pending"] == 1
    assert jobs.group([("f", 1)], id="g") == jobs.group([("f", 1), ("f", 2)], id="g")
    assert jobs.progress("g").total == 1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda j: j.submit("f", float("nan")), InvalidItem),
        (lambda j: j.submit("f", {"x": {1, 2}}), InvalidItem),
        (lambda j: j.submit("f", 1, lane="urgent"), ConfigError),
        (lambda j: j.submit("f", 1, delay=-1), ConfigError),
        (lambda j: j.submit("f", 1, id=""), ConfigError),
        (lambda j: j.submit("f", 1, id="x" * 201), ConfigError),
        (lambda j: j.submit("f", 1, id="\ud800"), ConfigError),
        (lambda j: j.submit("bad name!", 1), ConfigError),
        (lambda j: j.submit("f", 1, max_attempts=0), ConfigError),
        (lambda j: j.submit("f", 1, timeout=0), ConfigError),
        (lambda j: j.submit_many([("f", 1), ("f", float("inf"))]), InvalidItem),
        (lambda j: j.chain([("f", 1), 3]), ConfigError),
        (lambda j: j.chain(["f"]), ConfigError),
        (lambda j: j.group([("f", 1), ("f", float("nan"))], callback="cb"), InvalidItem),
        (lambda j: j.list(status="done"), ConfigError),
    ],
)
def test_bad_input_is_refused_and_nothing_stored(
    store: Store, call: Callable[[redbatch.Jobs], Any], error: type[Exception]
) -> None:
    jobs = make_jobs(store)
    with pytest.raises(error):
        call(jobs)
    assert sum(jobs.counts().values()) == 0


def test_a_cursor_of_another_query_is_refused(store: Store) -> None:
    jobs = make_jobs(store)
    for i in range(3):
        jobs.submit("f", i)
    page = jobs.list(limit=2)
    assert page.cursor is not None and len(page.jobs) == 2
    assert len(jobs.list(limit=2, cursor=page.cursor).jobs) == 1
    with pytest.raises(ConfigError):
        jobs.list(status="pending", limit=2, cursor=page.cursor)


def test_jobs_run_sync_and_async_with_results(store: Store) -> None:
    jobs = make_jobs(store)

    @jobs.function
    def double(params: Any, ctx: redbatch.JobContext) -> Any:
        return {"twice": params * 2, "job": ctx.job_id, "attempt": ctx.attempt}

    @jobs.function("later")
    async def add_one(params: Any, ctx: redbatch.JobContext) -> Any:
        await asyncio.sleep(0)
        return params + 1

    with worker(store, jobs):
        a = jobs.submit("double", 21, id="a")
        b = jobs.submit("later", 1)
        assert jobs.wait(a, WAIT).result == {"twice": 42, "job": "a", "attempt": 1}
        done = jobs.wait(b, WAIT)
        assert (done.status, done.result, done.progress) == ("succeeded", 2, 1.0)
        assert done.finished_at is not None and done.started_at is not None
    assert jobs.counts()["succeeded"] == 2


def test_a_worker_serves_batchers_and_jobs_together(store: Store) -> None:
    jobs = make_jobs(store)
    batcher = redbatch.Batcher(store, "feedback", max_items=2, max_wait=0.05)
    got = threading.Event()

    @batcher.handler
    def save(batch: redbatch.Batch) -> None:
        got.set()

    jobs.function("f")(lambda params, ctx: params)
    with worker(store, batcher, jobs):
        batcher.add("k", 1)
        assert jobs.wait(jobs.submit("f", "x"), WAIT).result == "x"
        assert got.wait(WAIT)


def test_a_chain_passes_each_result_on(store: Store) -> None:
    jobs = make_jobs(store)
    jobs.function("extract")(lambda doc, ctx: {"text": f"doc {doc['doc']}", "step": ctx.step})
    jobs.function("chunk")(lambda got, ctx: [got["text"], got["step"], ctx.step])
    jobs.function("entities")(lambda chunks, ctx: {"chunks": chunks, "step": ctx.step})
    with worker(store, jobs):
        job_id = jobs.chain([("extract", {"doc": 7}), "chunk", "entities"], lane="high")
        done = jobs.wait(job_id, WAIT)
    assert done.status == "succeeded" and (done.step, done.steps) == (2, 3)
    assert done.result == {"chunks": ["doc 7", 0, 1], "step": 2}


def test_a_group_calls_back_once_and_sees_which_failed(store: Store) -> None:
    jobs = make_jobs(store, max_attempts=1)
    calls: list[redbatch.GroupDone] = []

    @jobs.function
    def work(n: int, ctx: redbatch.JobContext) -> int:
        if n % 5 == 0:
            raise RuntimeError(f"bad {n}")
        return n

    @jobs.function
    def done(result: redbatch.GroupDone, ctx: redbatch.JobContext) -> int:
        calls.append(result)
        return result.progress.total

    with worker(store, jobs):
        group_id = jobs.group([("work", i) for i in range(20)], id="g", callback="done")
        until(lambda: jobs.progress(group_id).callback_job != "")
        callback = jobs.wait(jobs.progress(group_id).callback_job, WAIT)
    assert callback.result == 20 and len(calls) == 1
    progress = calls[0].progress
    assert (progress.total, progress.succeeded, progress.failed, progress.percent) == (20, 16, 4, 100.0)
    assert set(calls[0].failed) == {"g.0", "g.5", "g.10", "g.15"}
    assert "bad 5" in calls[0].failed["g.5"]


def test_retry_failed_picks_by_error_and_lane_and_calls_back_again(store: Store) -> None:
    jobs = make_jobs(store, max_attempts=1)
    seen: set[int] = set()
    calls: list[redbatch.GroupDone] = []

    @jobs.function
    def work(n: int, ctx: redbatch.JobContext) -> int:
        if n in (1, 2) and n not in seen:
            seen.add(n)
            raise ConnectionError("transient: try again")
        if n == 3:
            raise ValueError("permanent: bad document")
        return n

    jobs.function("done")(lambda result, ctx: calls.append(result))
    with worker(store, jobs):
        jobs.group([("work", i) for i in range(5)], id="g", callback="done")
        until(lambda: len(calls) == 1)
        assert jobs.progress("g").failed == 3
        retried = jobs.retry_failed("g", where=lambda job: "transient" in job.error, lane="high")
        assert retried == 2
        assert {jobs.get(f"g.{i}").lane for i in (1, 2)} == {"high"}
        until(lambda: len(calls) == 2)
    final = jobs.progress("g")
    assert (final.succeeded, final.failed, final.round) == (4, 1, 2)
    assert calls[1].failed.keys() == {"g.3"}
    with pytest.raises(NotFound):
        jobs.retry_failed("nope")


def test_lanes_high_first_and_low_not_starved(store: Store, clock: FakeClock) -> None:
    jobs = make_jobs(store, clock=clock, lane_step=60)
    jobs.submit("f", 1, id="low", lane="low")
    jobs.submit("f", 1, id="normal")
    jobs.submit("f", 1, id="high", lane="high")
    order = [c.lease.key for c in store.claim_due(jobs.spec, clock.now, 10)]
    assert order == ["high", "normal", "low"]
    jobs.submit("f", 1, id="old-low", lane="low")
    clock.advance(121)  # two lane steps and more: the old low job is ahead of a new high one
    jobs.submit("f", 1, id="new-high", lane="high")
    assert [c.lease.key for c in store.claim_due(jobs.spec, clock.now, 1)] == ["old-low"]


def test_a_delayed_job_waits(store: Store, clock: FakeClock) -> None:
    jobs = make_jobs(store, clock=clock)
    jobs.submit("f", 1, id="later", delay=5, lane="high")
    assert store.claim_due(jobs.spec, clock.now + 4999, 10) == []
    assert [c.lease.key for c in store.claim_due(jobs.spec, clock.now + 5000, 10)] == ["later"]


def test_per_job_attempts_timeouts_unknown_functions_and_bad_results(store: Store) -> None:
    jobs = make_jobs(store, max_attempts=5)
    release = threading.Event()

    @jobs.function
    def boom(params: Any, ctx: redbatch.JobContext) -> None:
        raise RuntimeError(f"boom on attempt {ctx.attempt}")

    @jobs.function
    async def stuck(params: Any, ctx: redbatch.JobContext) -> None:
        await asyncio.Event().wait()

    jobs.function("setty")(lambda params, ctx: {1, 2})
    jobs.function("blocker")(lambda params, ctx: release.wait(WAIT))
    with worker(store, jobs):
        failed = jobs.wait(jobs.submit("boom", None, max_attempts=2), WAIT)
        assert (failed.status, failed.attempt) == ("failed", 2) and "boom on attempt 2" in failed.error
        timed = jobs.wait(jobs.submit("stuck", None, timeout=0.2, max_attempts=1), WAIT)
        assert timed.status == "failed" and "timed out after 0.2 seconds" in timed.error
        unknown = jobs.wait(jobs.submit("nobody", None, max_attempts=2), WAIT)
        assert unknown.attempt == 2 and "unknown job function 'nobody'" in unknown.error
        bad = jobs.wait(jobs.submit("setty", None, max_attempts=1), WAIT)
        assert bad.status == "failed" and "not JSON" in bad.error
        release.set()
    letters = store.dead_letters(jobs.spec, 10, 0)
    assert len(letters) == 4


def test_progress_and_cooperative_cancel(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobtypes, "CANCEL_CHECK_INTERVAL", 0.02)
    jobs = make_jobs(store)
    reported = threading.Event()

    @jobs.function
    def long(params: Any, ctx: redbatch.JobContext) -> None:
        assert ctx.progress(0.5, "half way")
        reported.set()
        deadline = time.monotonic() + WAIT
        while not ctx.cancelled:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        raise JobCancelled()

    @jobs.function
    def polite(params: Any, ctx: redbatch.JobContext) -> str:
        reported.set()
        deadline = time.monotonic() + WAIT
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.005)
        return "stopped early"

    with worker(store, jobs):
        job_id = jobs.submit("long", None)
        assert reported.wait(WAIT)
        job = jobs.get(job_id)
        assert (job.status, job.progress, job.message) == ("running", 0.5, "half way")
        assert jobs.cancel(job_id).cancel_requested
        assert jobs.wait(job_id, WAIT).status == "cancelled"
        reported.clear()
        other = jobs.submit("polite", None)
        assert reported.wait(WAIT)
        jobs.cancel(other)
        stopped = jobs.wait(other, WAIT)
        assert (stopped.status, stopped.result) == ("cancelled", "stopped early")
    pending = jobs.submit("long", None)
    assert jobs.cancel(pending).status == "cancelled"
    assert jobs.counts()["cancelled"] == 3
    with pytest.raises(NotFound):
        jobs.cancel("nope")


def test_cleanup_deletes_old_finished_jobs(store: Store, clock: FakeClock) -> None:
    jobs = make_jobs(store, clock=clock)
    jobs.submit("f", 1, id="old")
    jobs.submit("f", 1, id="open")
    jobs.cancel("old")
    clock.advance(100)
    assert jobs.cleanup(older_than=50) == 1
    with pytest.raises(NotFound):
        jobs.get("old")
    assert jobs.get("open").status == "pending"


def test_an_empty_group_is_finished_and_calls_back(store: Store) -> None:
    jobs = make_jobs(store)
    calls: list[redbatch.GroupDone] = []
    jobs.function("done")(lambda result, ctx: calls.append(result))
    with worker(store, jobs):
        jobs.group([], id="empty", callback="done")
        until(lambda: len(calls) == 1)
    assert calls[0].progress.total == 0 and calls[0].progress.percent == 100.0
