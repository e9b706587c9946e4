"""The jobs front door: submit tracked jobs, chains and groups; read, list, cancel, retry.

A job queue is a batcher of the engine whose keys are job ids (``redbatch.jobrecords``), so
jobs share the batches' lease, heartbeat, retry and dead-letter path; a ``Worker`` serves
``Jobs`` beside batchers. Running a job is ``redbatch.jobrunner``'s; the public values and
the payload are ``redbatch.jobtypes``'.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar, overload

from redbatch.checks import (
    DEFAULT_MAX_ITEM_BYTES,
    check_key,
    check_name,
    encode_item,
    is_async_callable,
    positive_int,
    seconds_to_ms,
)
from redbatch.errors import ConfigError, InvalidKey, NotFound
from redbatch.jobrecords import JOBS_PREFIX, JobStatus, Lane, NewGroup, NewJob, lane_score
from redbatch.jobtypes import GroupProgress, Job, JobPage, Payload
from redbatch.stores.base import JobStore, Store, new_batch_id, new_batch_ids
from redbatch.types import Clock, QueueSpec, system_clock

JobFunction: TypeAlias = Callable[[Any, Any], Any] | Callable[[Any, Any], Awaitable[Any]]
F = TypeVar("F", bound=JobFunction)
Member: TypeAlias = tuple[str, Any] | Sequence[tuple[str, Any] | str]
MAX_JOB_ID = 200
CLEANUP_CHUNK = 1000


def _lane(lane: str | Lane) -> Lane:
    if isinstance(lane, Lane):
        return lane
    if isinstance(lane, str) and lane.upper() in Lane.__members__:
        return Lane[lane.upper()]
    raise ConfigError(f"lane must be 'high', 'normal' or 'low', not {lane!r}")


def _job_id(value: object, what: str = "job id") -> str:
    try:
        job_id = check_key(value)
    except InvalidKey as exc:  # said again in a job's words
        raise ConfigError(f"a {what} must be a non-empty str UTF-8 can encode: {exc}") from None
    if len(job_id) > MAX_JOB_ID:
        raise ConfigError(f"a {what} is at most {MAX_JOB_ID} characters, this one has {len(job_id)}")
    return job_id


class Jobs:
    """A named job queue: functions registered here run on workers as tracked jobs.

    Each job has a status (pending, running, succeeded, failed, cancelled), progress, a
    result or an error and timestamps, kept in the store until ``retention`` after it
    finished. Jobs, chains (each step's result is the next step's params) and groups (exact
    counters and a completion callback run exactly once per round) share the batches'
    engine: leases kept by heartbeat, retries with backoff, a crashed worker's job retried
    after its lease. Constructing a Jobs does no I/O.

    Args:
        store: The store, from ``connect``; a worker serving these jobs gets the same object.
        name: The queue's name: 1 to 64 letters, digits, ``_``, ``.`` or ``-``.
        max_attempts: Attempts each job (each step of a chain) gets by default; errors,
            timeouts and lost workers all count. An integer, at least 1; default 3.
        lease: Seconds a worker owns a running job without a heartbeat: the time to recover
            a crashed worker's job. At least 0.1; default 60.
        timeout: Seconds a function may run before its attempt fails; None (the default)
            for no limit. ``submit`` may set one per job.
        backoff: Seconds before the first retry, doubling per attempt (with jitter) up to
            ``max_backoff``. Default 1.
        max_backoff: The longest delay before a retry. Default 300.
        lane_step: Seconds of head start per lane: a high job is due ``2 * lane_step``
            before a low one submitted at the same time, and a low job is never overtaken by
            high ones submitted that long after it. Default 60.
        retention: Seconds a finished job (or a finished group, whole) is kept; workers
            delete older ones once a minute. Default 7 days.
        clock: The time in integer epoch milliseconds; tests inject a fake one.

    Raises:
        ConfigError: A setting is out of range or the name is not valid.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        *,
        max_attempts: int = 3,
        lease: float = 60.0,
        timeout: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        lane_step: float = 60.0,
        retention: float = 7 * 86400.0,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.name = check_name(name)
        self.max_attempts = positive_int("max_attempts", max_attempts)
        lease_ms = seconds_to_ms("lease", lease, allow_zero=False)
        if lease_ms < 100:
            raise ConfigError(f"lease must be at least 0.1 seconds, not {lease}")
        # max_items 1, max_wait 0: one job per batch, due at its lane's score.
        self.spec = QueueSpec(JOBS_PREFIX + self.name, 1, 0, 0, False, self.max_attempts, lease_ms)
        self.configured = self.spec
        self.timeout = None if timeout is None else seconds_to_ms("timeout", timeout, allow_zero=False) / 1000
        self.backoff_ms = seconds_to_ms("backoff", backoff)
        self.max_backoff_ms = seconds_to_ms("max_backoff", max_backoff)
        self.lane_step_ms = seconds_to_ms("lane_step", lane_step)
        self.retention_ms = seconds_to_ms("retention", retention, allow_zero=False)
        self.clock = clock
        self.functions: dict[str, tuple[JobFunction, bool]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Jobs({self.name!r}, store={self.store.url!r})"

    @classmethod
    def open(cls, store: Store, name: str, *, clock: Clock = system_clock) -> Jobs:
        """The job queue ``name`` with the attempts and lease ``store`` holds for it, for tools
        and operators (as ``Batcher.open``): it reads, submits, cancels and cleans up, and
        registers no function. Its other settings are the defaults. Reads the store once.

        Raises:
            NotFound: The store holds no rules for ``name`` (no worker ever ran it) and
                no job in it.
            ConfigError: ``name`` is not a valid queue name, or the store keeps no jobs.
            StoreUnavailable: The store could not be reached in time.
        """
        if not isinstance(store, JobStore):
            raise ConfigError(f"the store {store.url} does not support jobs")
        rules = store.stored_rules(JOBS_PREFIX + check_name(name))
        if rules is None:
            # Not every store records rules on submit: a queue that holds jobs exists too.
            jobs = cls(store, name, clock=clock)
            if not any(store.job_counts(jobs.spec).values()):
                raise NotFound(f"no job queue {name!r} in {store.url}: it holds no jobs, no worker ran it")
            return jobs
        jobs = cls(store, name, max_attempts=rules.max_attempts, lease=rules.lease_ms / 1000, clock=clock)
        jobs.adopt_rules(rules)
        return jobs

    @property
    def _jobs(self) -> JobStore:
        if not isinstance(self.store, JobStore):
            raise ConfigError(f"the store {self.store.url} does not support jobs")
        return self.store

    # ------------------------------------------------------------------ functions

    @overload
    def function(self, fn: F) -> F: ...
    @overload
    def function(self, fn: str) -> Callable[[F], F]: ...
    def function(self, fn: F | str) -> F | Callable[[F], F]:
        """Register a job function, as ``@jobs.function`` (named after the function) or
        ``@jobs.function("name")``.

        It is called as ``fn(params, ctx)`` with the job's params (decoded from JSON) and a
        ``JobContext``, sync (on a worker's handler thread) or async (on its loop), and
        returns the job's result: a JSON value. Raising fails the attempt (retried with
        backoff up to ``max_attempts``, then the job fails); raising ``JobCancelled`` ends
        the job cancelled.

        Raises:
            ConfigError: Not callable, or the name is not valid.
        """
        if isinstance(fn, str):
            name = check_name(fn)
            return lambda f: self._register(name, f)
        return self._register(check_name(getattr(fn, "__name__", "")), fn)

    def _register(self, name: str, fn: F) -> F:
        if not callable(fn):
            raise ConfigError("a job function must be callable")
        self.functions[name] = (fn, is_async_callable(fn))
        return fn

    # ------------------------------------------------------------------ submitting

    def _new_job(
        self,
        steps: Sequence[tuple[str, Any] | str],
        job_id: str,
        lane: Lane,
        delay: float,
        max_attempts: int | None,
        timeout: float | None,
        group: str,
        now: int,
    ) -> NewJob:
        """Check and encode one job (a chain when ``steps`` has more than one)."""
        if not steps:
            raise ConfigError("a chain needs at least one step")
        first = steps[0]
        if not isinstance(first, tuple) or len(first) != 2:
            raise ConfigError(f"a chain's first step is a (function, params) pair, not {first!r}")
        fn, params = first
        rest = [check_name(s) if isinstance(s, str) else self._bad_step(s) for s in steps[1:]]
        attempts = self.max_attempts if max_attempts is None else positive_int("max_attempts", max_attempts)
        seconds = None if timeout is None else seconds_to_ms("timeout", timeout, allow_zero=False) / 1000
        encode_item(params, DEFAULT_MAX_ITEM_BYTES)  # InvalidItem: not JSON (NaN included), too large
        payload = Payload(
            check_name(fn), params, tuple(rest), int(lane), seconds, attempts, group=group
        ).encode()
        delay_ms = seconds_to_ms("delay", delay)
        score = lane_score(lane, now, self.lane_step_ms, now + delay_ms if delay_ms else None)
        return NewJob(job_id, fn, payload, score, lane, attempts, len(steps), group)

    @staticmethod
    def _bad_step(step: object) -> str:
        raise ConfigError(f"a chain's later steps are function names, not {step!r}")

    def submit(
        self,
        fn: str,
        params: Any = None,
        *,
        id: str | None = None,
        lane: str = "normal",
        delay: float = 0.0,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """Submit one job; return its id. One store call; durable when it returns.

        Submitting an id that exists changes nothing (idempotent) and returns the id.

        Args:
            fn: The function's registered name (it need not be registered in this process).
            params: Its params: a JSON value (no NaN or infinities), at most 1 MiB encoded.
            id: The job's id (at most 200 characters); default a new unique one.
            lane: ``"high"``, ``"normal"`` or ``"low"``: high jobs run first, low ones are
                not starved (see ``lane_step``).
            delay: Seconds before it may run (at least 0).
            max_attempts: Its attempts; default the queue's.
            timeout: Its time limit in seconds; default the queue's.

        Raises:
            InvalidItem: ``params`` is not JSON or too large. Nothing was stored.
            ConfigError: Any other argument is invalid. Nothing was stored.
            StoreUnavailable: The store could not be reached in time.
        """
        job_id = new_batch_id() if id is None else _job_id(id)
        now = self.clock()
        job = self._new_job([(fn, params)], job_id, _lane(lane), delay, max_attempts, timeout, "", now)
        self._jobs.submit_jobs(self.spec, [job], None, now)
        return job_id

    def submit_many(self, calls: Sequence[tuple[str, Any]], *, lane: str = "normal") -> list[str]:
        """Submit many ``(function, params)`` jobs in one store call, all checked first;
        return their new ids. Raises what ``submit`` raises, with nothing stored."""
        now, lane_ = self.clock(), _lane(lane)
        ids = new_batch_ids(len(calls))
        jobs = [
            self._new_job([c], i, lane_, 0.0, None, None, "", now) for c, i in zip(calls, ids, strict=True)
        ]
        if jobs:
            self._jobs.submit_jobs(self.spec, jobs, None, now)
        return [j.id for j in jobs]

    def chain(
        self,
        steps: Sequence[tuple[str, Any] | str],
        *,
        id: str | None = None,
        lane: str = "normal",
        delay: float = 0.0,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """Submit a pipeline as one job: ``[(fn, params), "next_fn", ...]``; each step's
        result is the next step's params, and the job's result is the last step's. ``id``,
        ``lane`` and ``delay`` are ``submit``'s; ``max_attempts`` and ``timeout`` (default
        the queue's) hold for each step. Returns its id; raises what ``submit`` raises."""
        job_id = new_batch_id() if id is None else _job_id(id)
        now = self.clock()
        job = self._new_job(list(steps), job_id, _lane(lane), delay, max_attempts, timeout, "", now)
        self._jobs.submit_jobs(self.spec, [job], None, now)
        return job_id

    def group(
        self,
        members: Sequence[Member],
        *,
        id: str | None = None,
        callback: str | None = None,
        lane: str = "normal",
    ) -> str:
        """Submit a group: jobs counted together, with a callback once all have finished.

        Members are ``(fn, params)`` pairs or chains (lists, as ``chain`` takes them); member
        ``i`` gets the id ``f"{group_id}.{i}"``. When every member has finished (failed ones
        included), the ``callback`` function runs once, as a job of its own, with a
        ``GroupDone`` (the counters and the failed members' errors) as its params. Submitting
        a group id that exists changes nothing. One store call.

        Returns:
            The group's id.

        Raises:
            InvalidItem: A member's params are not JSON. Nothing was stored.
            ConfigError: Any other argument is invalid. Nothing was stored.
        """
        group_id = new_batch_id() if id is None else _job_id(id, "group id")
        lane_, now = _lane(lane), self.clock()
        jobs = []
        for i, member in enumerate(members):
            steps = [member] if isinstance(member, tuple) else list(member)
            jobs.append(self._new_job(steps, f"{group_id}.{i}", lane_, 0.0, None, None, group_id, now))
        record = NewGroup(group_id)
        if callback is not None:
            payload = Payload(
                check_name(callback),
                None,
                (),
                int(Lane.NORMAL),
                None,
                self.max_attempts,
                callback_of=group_id,
            )
            record = NewGroup(group_id, payload.encode(), callback, self.max_attempts)
        self._jobs.submit_jobs(self.spec, jobs, record, now)
        return group_id

    # ------------------------------------------------------------------ reading

    def get(self, id: str) -> Job:
        """The job ``id``. Raises ``NotFound`` for an unknown (or cleaned up) id."""
        (record,) = self._jobs.get_jobs(self.spec, [_job_id(id)])
        if record is None:
            raise NotFound(f"job queue {self.name!r} has no job {id!r}")
        return Job.from_record(record)

    def list(
        self, status: str | None = None, group: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> JobPage:
        """Jobs newest first, optionally of one status and/or group, ``limit`` a page; pass
        the page's ``cursor`` back for the next. ConfigError for a bad status or cursor."""
        if status is not None and status not in JobStatus.__members__.values():
            raise ConfigError(f"status must be one of {[s.value for s in JobStatus]}, not {status!r}")
        page = self._jobs.list_jobs(
            self.spec,
            None if status is None else JobStatus(status),
            group,
            positive_int("limit", limit),
            cursor,
        )
        return JobPage([Job.from_record(r) for r in page.jobs], page.cursor)

    def counts(self) -> dict[str, int]:
        """How many jobs hold each status, every status included."""
        return {s.value: n for s, n in self._jobs.job_counts(self.spec).items()}

    def progress(self, group_id: str) -> GroupProgress:
        """A group's counters. Raises ``NotFound`` for an unknown group."""
        record = self._jobs.get_group(self.spec, _job_id(group_id, "group id"))
        if record is None:
            raise NotFound(f"job queue {self.name!r} has no group {group_id!r}")
        return GroupProgress.from_record(record)

    def wait(self, id: str, timeout: float) -> Job:
        """Poll the job until it finished (backing off from 10 ms to 0.5 s between reads);
        raises ``TimeoutError`` after ``timeout`` seconds, ``NotFound`` for an unknown id."""
        deadline, pause = time.monotonic() + timeout, 0.01
        while True:
            job = self.get(id)
            left = deadline - time.monotonic()
            if job.finished:
                return job
            if left <= 0:
                raise TimeoutError(f"job {id!r} is still {job.status} after {timeout} seconds")
            time.sleep(min(pause, left))
            pause = min(0.5, pause * 2)

    # ------------------------------------------------------------------ changing

    def cancel(self, id: str) -> Job:
        """Cancel a pending job at once; ask a running one to stop (``JobContext.cancelled``);
        leave a finished one as it is. Returns the job after the call. NotFound if unknown."""
        self._jobs.cancel_job(self.spec, _job_id(id), self.clock())
        return self.get(id)

    def retry_failed(
        self, group_id: str, *, where: Callable[[Job], bool] | None = None, lane: str | None = None
    ) -> int:
        """Run a group's failed members again (those ``where(job)`` accepts, e.g. by their
        ``error``), in ``lane`` (default: each its own); return how many. A finished group
        reopens, and its callback runs again when the new round ends."""
        self.progress(group_id)  # NotFound for an unknown group
        lane_ = None if lane is None else _lane(lane)
        chosen: dict[Lane, list[str]] = {}
        cursor = None
        while True:
            page = self.list(status="failed", group=group_id, limit=500, cursor=cursor)
            for job in page.jobs:
                if where is None or where(job):
                    chosen.setdefault(lane_ or Lane[job.lane.upper()], []).append(job.id)
            if (cursor := page.cursor) is None:
                break
        now, retried = self.clock(), 0
        for each_lane, ids in chosen.items():
            score = lane_score(each_lane, now, self.lane_step_ms)
            retried += len(self._jobs.retry_jobs(self.spec, ids, lane_, score, now))
        return retried

    def cleanup(self, older_than: float) -> int:
        """Delete jobs (and whole groups) that finished more than ``older_than`` seconds ago;
        return how many jobs. Pending and running jobs are never deleted."""
        before = self.clock() - seconds_to_ms("older_than", older_than)
        deleted = 0
        while (done := self._jobs.cleanup_jobs(self.spec, before, CLEANUP_CHUNK)) > 0:
            deleted += done
        return deleted

    # ------------------------------------------------------------------ for the worker

    def adopt_rules(self, rules: QueueSpec) -> None:
        """Use the lease and attempts another worker published (as ``Batcher.adopt_rules``)."""
        with self._lock:
            self.spec = rules

    def retry_at(self, attempt: int, max_attempts: int, now_ms: int) -> int | None:
        """When to retry after ``attempt`` of ``max_attempts`` failed (None: no more), as
        ``Batcher.retry_at``: exponential backoff with equal jitter."""
        if attempt >= max_attempts:
            return None
        delay = min(self.max_backoff_ms, self.backoff_ms * (2 ** (attempt - 1)))
        return now_ms + int(delay / 2 + random.random() * delay / 2)
