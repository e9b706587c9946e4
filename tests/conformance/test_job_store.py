"""The job operations of the store protocol (``stores.base.JobStore``), on every store.

These drive the store directly, with the test clock, so that each row of
``redbatch.engine.JOB_TRANSITIONS`` is checked where it is implemented. The front door
(``redbatch.Jobs``) and the worker are tested on top of these in test_jobs.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from redbatch.errors import NotFound
from redbatch.jobrecords import (
    JOBS_PREFIX,
    JobOutcome,
    JobStatus,
    Lane,
    NewGroup,
    NewJob,
    OutcomeKind,
    callback_job_id,
)
from redbatch.stores.base import LEASE_EXPIRED_ERROR, Store
from redbatch.types import ClaimedBatch, QueueSpec
from tests.conftest import FakeClock

P, R, S, F, C = (
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)


def spec(name: str = "q", max_attempts: int = 3, lease_ms: int = 10_000) -> QueueSpec:
    return QueueSpec(JOBS_PREFIX + name, 1, 0, 0, False, max_attempts, lease_ms)


def job(job_id: str, now: int, *, group: str = "", attempts: int = 3, lane: Lane = Lane.NORMAL,
        score: int | None = None, fn: str = "f", steps: int = 1) -> NewJob:  # fmt: skip
    payload = orjson.dumps({"fn": fn, "id": job_id})
    return NewJob(job_id, fn, payload, now if score is None else score, lane, attempts, steps, group)


def submit(store: Store, q: QueueSpec, clock: FakeClock, *ids: str, **kw: Any) -> list[bool]:
    return store.submit_jobs(q, [job(i, clock.now, **kw) for i in ids], None, clock.now)


def claim(store: Store, q: QueueSpec, clock: FakeClock, limit: int = 100) -> dict[str, ClaimedBatch]:
    return {c.lease.key: c for c in store.claim_due(q, clock.now, limit)}


def finish(store: Store, q: QueueSpec, clock: FakeClock, c: ClaimedBatch, result: Any = None) -> bool:
    (held,) = store.finish_jobs(
        q, [JobOutcome(c.lease, OutcomeKind.SUCCEEDED, orjson.dumps(result))], clock.now
    )
    return held


def status(store: Store, q: QueueSpec, job_id: str) -> JobStatus:
    (record,) = store.get_jobs(q, [job_id])
    assert record is not None
    return record.status


def group_counts(store: Store, q: QueueSpec, group_id: str) -> dict[str, int]:
    record = store.get_group(q, group_id)
    assert record is not None
    return {s.value: n for s, n in record.counts.items() if n} | {"total": record.total}


def test_submit_creates_a_pending_record_once(store: Store, clock: FakeClock) -> None:
    q = spec()
    assert submit(store, q, clock, "a", "b") == [True, True]
    clock.advance(1)
    assert submit(store, q, clock, "a", "c") == [False, True]  # the same id again: idempotent
    a, missing = store.get_jobs(q, ["a", "nope"])
    assert missing is None
    assert a is not None
    assert (a.status, a.attempt, a.function, a.lane, a.max_attempts) == (P, 0, "f", Lane.NORMAL, 3)
    assert a.created_at == clock.now - 1000
    assert (a.started_at, a.finished_at, a.result, a.error, a.group) == (None, None, None, "", "")
    assert orjson.loads(a.payload) == {"fn": "f", "id": "a"}
    assert store.job_counts(q)[P] == 3
    assert len(claim(store, q, clock)) == 3  # each job one batch: the duplicate added nothing


def test_a_job_runs_and_succeeds_with_its_result(store: Store, clock: FakeClock) -> None:
    q = spec()
    submit(store, q, clock, "a")
    c = claim(store, q, clock)["a"]
    assert orjson.loads(c.payloads[0]) == {"fn": "f", "id": "a"}
    running = store.get_jobs(q, ["a"])[0]
    assert running is not None
    assert (running.status, running.attempt, running.started_at) == (R, 1, clock.now)
    clock.advance(2)
    assert finish(store, q, clock, c, {"answer": 42})
    done = store.get_jobs(q, ["a"])[0]
    assert done is not None
    assert (done.status, done.finished_at, done.progress) == (S, clock.now, 1.0)
    assert done.result is not None and orjson.loads(done.result) == {"answer": 42}
    assert not finish(store, q, clock, c)  # once only
    assert claim(store, q, clock) == {}
    counts = store.job_counts(q)
    assert counts == {P: 0, R: 0, S: 1, F: 0, C: 0}


def test_a_stale_worker_cannot_finish_fail_or_report_progress(store: Store, clock: FakeClock) -> None:
    q = spec(lease_ms=1000)
    submit(store, q, clock, "a")
    stale = claim(store, q, clock)["a"]
    clock.advance(1)
    fresh = claim(store, q, clock)["a"]
    assert fresh.attempt == 2
    assert not store.job_progress(q, stale.lease, 0.5, "stale")
    assert not finish(store, q, clock, stale, "stale")
    assert not store.fail(q, stale.lease, clock.now, "stale", None)
    record = store.get_jobs(q, ["a"])[0]
    assert record is not None
    assert (record.status, record.attempt, record.progress) == (R, 2, None)
    assert store.job_progress(q, fresh.lease, 0.25, "a quarter")
    record = store.get_jobs(q, ["a"])[0]
    assert record is not None
    assert (record.progress, record.message) == (0.25, "a quarter")
    assert finish(store, q, clock, fresh, "fresh")
    record = store.get_jobs(q, ["a"])[0]
    assert record is not None and record.result == b'"fresh"'


def test_a_failed_attempt_is_retried_then_the_job_fails_into_dead_letters(
    store: Store, clock: FakeClock
) -> None:
    q = spec()
    submit(store, q, clock, "a", attempts=2)
    c = claim(store, q, clock)["a"]
    assert store.fail(q, c.lease, clock.now, "boom 1", clock.now + 1000)
    record = store.get_jobs(q, ["a"])[0]
    assert record is not None and (record.status, record.error) == (P, "boom 1")
    clock.advance(1)
    c = claim(store, q, clock)["a"]
    assert c.attempt == 2 and status(store, q, "a") == R
    assert store.fail(q, c.lease, clock.now, "boom 2", None)
    record = store.get_jobs(q, ["a"])[0]
    assert record is not None
    assert (record.status, record.error, record.finished_at, record.attempt) == (F, "boom 2", clock.now, 2)
    (letter,) = store.dead_letters(q, 10, 0)
    assert letter.key == "a" and letter.error == "boom 2"


def test_a_lapsed_lease_uses_the_jobs_own_attempts(store: Store, clock: FakeClock) -> None:
    q = spec(max_attempts=5, lease_ms=1000)
    submit(store, q, clock, "one", attempts=1)
    submit(store, q, clock, "two", attempts=2)
    claim(store, q, clock)
    clock.advance(1)
    reclaimed = claim(store, q, clock)
    assert set(reclaimed) == {"two"}  # "one" used its only attempt: buried
    record = store.get_jobs(q, ["one"])[0]
    assert record is not None and (record.status, record.error) == (F, LEASE_EXPIRED_ERROR)
    assert status(store, q, "two") == R
    clock.advance(1)
    assert claim(store, q, clock) == {}
    assert status(store, q, "two") == F
    assert {d.key for d in store.dead_letters(q, 10, 0)} == {"one", "two"}


def test_a_chain_advances_step_by_step_in_one_step_each(store: Store, clock: FakeClock) -> None:
    q = spec()
    submit(store, q, clock, "doc", steps=3, fn="extract")
    c = claim(store, q, clock)["doc"]
    for step, nxt in ((1, "chunk"), (2, "entities")):
        payload = orjson.dumps({"fn": nxt, "input": step})
        outcome = JobOutcome(c.lease, OutcomeKind.ADVANCE, orjson.dumps(step), payload, clock.now, nxt)
        assert store.finish_jobs(q, [outcome], clock.now) == [True]
        record = store.get_jobs(q, ["doc"])[0]
        assert record is not None
        assert (record.status, record.step, record.attempt, record.function) == (P, step, 0, nxt)
        assert record.result == orjson.dumps(step) and record.payload == payload
        c = claim(store, q, clock)["doc"]
        assert c.payloads == (payload,) and c.attempt == 1
        assert store.get_jobs(q, ["doc"])[0].status == R  # type: ignore[union-attr]
    assert finish(store, q, clock, c, "all done")
    record = store.get_jobs(q, ["doc"])[0]
    assert record is not None and (record.status, record.step, record.steps) == (S, 2, 3)


def test_cancel_a_pending_job_drops_it_and_a_running_one_is_asked(store: Store, clock: FakeClock) -> None:
    q = spec(lease_ms=60_000)  # the running job's lease outlasts the 10 s this test waits
    submit(store, q, clock, "running", "retrying")
    claimed = claim(store, q, clock)
    assert store.fail(q, claimed["retrying"].lease, clock.now, "boom", clock.now + 5000)
    submit(store, q, clock, "fresh")
    assert store.cancel_job(q, "fresh", clock.now) == C
    assert store.cancel_job(q, "retrying", clock.now) == C
    assert store.cancel_job(q, "running", clock.now) == R
    record = store.get_jobs(q, ["running"])[0]
    assert record is not None and record.cancel_requested
    record = store.get_jobs(q, ["fresh"])[0]
    assert record is not None and record.finished_at == clock.now
    clock.advance(9)  # past the cancelled retry's time, within the running job's lease
    assert claim(store, q, clock) == {}  # nothing of the cancelled jobs is left to run
    (held,) = store.finish_jobs(q, [JobOutcome(claimed["running"].lease, OutcomeKind.CANCELLED)], clock.now)
    assert held and status(store, q, "running") == C
    assert store.cancel_job(q, "running", clock.now) == C  # finished: left as it is
    with pytest.raises(NotFound):
        store.cancel_job(q, "nope", clock.now)
    assert store.job_counts(q)[C] == 3


def test_retry_jobs_runs_failed_jobs_again_from_their_payload(store: Store, clock: FakeClock) -> None:
    q = spec()
    submit(store, q, clock, "bad", "good", attempts=1)
    c = claim(store, q, clock)
    assert store.fail(q, c["bad"].lease, clock.now, "transient", None)
    assert finish(store, q, clock, c["good"])
    assert len(store.dead_letters(q, 10, 0)) == 1
    assert store.retry_jobs(q, ["bad", "good", "nope"], Lane.HIGH, clock.now - 5000, clock.now) == ["bad"]
    record = store.get_jobs(q, ["bad"])[0]
    assert record is not None
    assert (record.status, record.attempt, record.lane, record.finished_at) == (P, 0, Lane.HIGH, None)
    assert store.dead_letters(q, 10, 0) == []
    again = claim(store, q, clock)["bad"]
    assert again.payloads == (record.payload,) and again.attempt == 1
    assert finish(store, q, clock, again)
    assert store.job_counts(q)[S] == 2


def test_lanes_order_due_jobs_by_their_scores(store: Store, clock: FakeClock) -> None:
    q = spec()
    now = clock.now
    store.submit_jobs(
        q,
        [
            job("low", now, score=now),
            job("high", now, score=now - 2000),
            job("normal", now, score=now - 1000),
        ],
        None,
        now,
    )
    order = [
        c.lease.key
        for c in [*store.claim_due(q, now, 1), *store.claim_due(q, now, 1), *store.claim_due(q, now, 1)]
    ]
    assert order == ["high", "normal", "low"]
    store.submit_jobs(q, [job("later", now, score=now + 5000)], None, now)
    assert store.claim_due(q, now + 4999, 10) == []
    assert [c.lease.key for c in store.claim_due(q, now + 5000, 10)] == ["later"]


def test_a_group_counts_each_member_once_and_calls_back_once(store: Store, clock: FakeClock) -> None:
    q = spec(lease_ms=1000)
    members = [job(f"m{i}", clock.now, group="g", attempts=2) for i in range(4)]
    callback = NewGroup("g", orjson.dumps({"fn": "done"}), "done", 3)
    assert store.submit_jobs(q, members, callback, clock.now) == [True] * 4
    assert store.submit_jobs(q, [job("m9", clock.now, group="g")], callback, clock.now) == [False]
    assert group_counts(store, q, "g") == {"pending": 4, "total": 4}
    claimed = claim(store, q, clock)
    assert group_counts(store, q, "g") == {"running": 4, "total": 4}
    clock.advance(1)  # every lease lapses: all four are reclaimed, still counted once
    claimed = claim(store, q, clock)
    assert set(claimed) == {"m0", "m1", "m2", "m3"}
    assert group_counts(store, q, "g") == {"running": 4, "total": 4}
    assert finish(store, q, clock, claimed["m0"])
    assert store.fail(q, claimed["m1"].lease, clock.now, "bad doc", None)
    assert store.fail(q, claimed["m2"].lease, clock.now, "again", clock.now)
    assert group_counts(store, q, "g") == {
        "succeeded": 1,
        "failed": 1,
        "pending": 1,
        "running": 1,
        "total": 4,
    }
    assert store.cancel_job(q, "m2", clock.now) == C
    group = store.get_group(q, "g")
    assert group is not None and group.finished_at is None and group.callback_job == ""
    assert store.get_jobs(q, [callback_job_id("g", 1)]) == [None]
    assert finish(store, q, clock, claimed["m3"])
    group = store.get_group(q, "g")
    assert group is not None
    assert (group.finished_at, group.round, group.callback_job) == (clock.now, 1, callback_job_id("g", 1))
    assert group_counts(store, q, "g") == {"succeeded": 2, "failed": 1, "cancelled": 1, "total": 4}
    cb = claim(store, q, clock)
    assert set(cb) == {callback_job_id("g", 1)}  # the callback job, and only once
    assert cb[callback_job_id("g", 1)].payloads == (orjson.dumps({"fn": "done"}),)
    assert not finish(store, q, clock, claimed["m3"])  # a second finish changes nothing
    assert group_counts(store, q, "g")["succeeded"] == 2
    # retrying the failed member opens a second round, whose end calls back again
    assert store.retry_jobs(q, ["m1"], None, clock.now, clock.now) == ["m1"]
    group = store.get_group(q, "g")
    assert group is not None and (group.finished_at, group.round) == (None, 2)
    assert group_counts(store, q, "g") == {"succeeded": 2, "pending": 1, "cancelled": 1, "total": 4}
    again = claim(store, q, clock)
    assert set(again) == {"m1"}
    assert finish(store, q, clock, again["m1"])
    group = store.get_group(q, "g")
    assert group is not None and group.callback_job == callback_job_id("g", 2)
    assert set(claim(store, q, clock)) == {callback_job_id("g", 2)}


def test_a_lapsed_last_member_finishes_its_group(store: Store, clock: FakeClock) -> None:
    q = spec(lease_ms=1000)
    store.submit_jobs(
        q, [job("only", clock.now, group="g", attempts=1)], NewGroup("g", b'"cb"', "cb"), clock.now
    )
    claim(store, q, clock)
    clock.advance(1)
    # the claim buries it; its callback may be claimed in the same call or the next
    claimed = set(claim(store, q, clock)) | set(claim(store, q, clock))
    assert claimed == {callback_job_id("g", 1)}
    assert group_counts(store, q, "g") == {"failed": 1, "total": 1}


def test_an_empty_group_is_finished_at_once(store: Store, clock: FakeClock) -> None:
    q = spec()
    assert store.submit_jobs(q, [], NewGroup("g", b'"cb"', "cb"), clock.now) == []
    group = store.get_group(q, "g")
    assert group is not None and group.total == 0 and group.finished_at == clock.now
    assert set(claim(store, q, clock)) == {callback_job_id("g", 1)}
    assert store.get_group(q, "nope") is None


def test_list_jobs_pages_newest_first_by_status_and_group(store: Store, clock: FakeClock) -> None:
    q = spec()
    for i in range(7):
        submit(store, q, clock, f"j{i}")
        clock.advance(0.001 * (i % 2))  # some share a millisecond: the id breaks the tie
    store.submit_jobs(
        q, [job("g0", clock.now, group="g"), job("g1", clock.now, group="g")], NewGroup("g"), clock.now
    )
    c = claim(store, q, clock, limit=2)  # the two oldest: j0, j1
    assert set(c) == {"j0", "j1"}
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_jobs(q, None, None, 3, cursor)
        assert len(page.jobs) <= 3
        seen += [j.id for j in page.jobs]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert len(seen) == len(set(seen)) == 9
    created = [(j.created_at, j.id) for j in store.get_jobs(q, seen) if j is not None]
    assert created == sorted(created, reverse=True)
    running = store.list_jobs(q, R, None, 10, None)
    assert {j.id for j in running.jobs} == {"j0", "j1"} and running.cursor is None
    pending = store.list_jobs(q, P, None, 100, None)
    assert {j.id for j in pending.jobs} == {"j2", "j3", "j4", "j5", "j6", "g0", "g1"}
    assert {j.id for j in store.list_jobs(q, None, "g", 100, None).jobs} == {"g0", "g1"}
    assert store.list_jobs(q, R, "g", 100, None).jobs == []
    assert store.list_jobs(q, P, "nope", 100, None).jobs == []


def test_cleanup_deletes_old_finished_jobs_and_whole_groups_only(store: Store, clock: FakeClock) -> None:
    q = spec()
    submit(store, q, clock, "old", "failed", "young", "open", attempts=1)
    store.submit_jobs(
        q, [job("g0", clock.now, group="g"), job("g1", clock.now, group="g")], NewGroup("g"), clock.now
    )
    c = claim(store, q, clock)
    assert finish(store, q, clock, c["old"])
    assert store.fail(q, c["failed"].lease, clock.now, "boom", None)
    assert finish(store, q, clock, c["g0"])  # the group stays open: g1 runs on
    clock.advance(10)
    assert finish(store, q, clock, c["young"])
    assert store.cleanup_jobs(q, clock.now - 5000, 100) == 2  # old, failed (not g0: open group)
    assert store.get_jobs(q, ["old", "failed", "young", "open", "g0"])[:2] == [None, None]
    assert store.dead_letters(q, 10, 0) == []  # the failed job's letter went with it
    assert finish(store, q, clock, c["g1"])
    clock.advance(10)
    assert store.cleanup_jobs(q, clock.now - 5000, 100) == 3  # young and the whole group
    assert store.get_group(q, "g") is None
    assert store.get_jobs(q, ["open"])[0] is not None  # still running: never cleaned
    counts = store.job_counts(q)
    assert counts[R] == 1 and counts[S] == 0 and counts[F] == 0
