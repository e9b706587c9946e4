"""The jobs and groups routes: submit, read, list, cancel, count and clean up jobs; submit
groups, read their progress, retry their failed members.

Every route names its job queue in the path (``/jobs/{queue}/...``) and is a thin call of
one ``Jobs`` method: the library checks the input and raises the typed errors that
``redbatch.service.errors`` maps to statuses. A job's or group's id comes after a fixed
segment (``/id/{job_id}``, ``/groups/{group_id}``) and may hold any character, ``/``
included (percent-encoded), so no id is shadowed by a route such as ``/counts``.

Which queues exist: those the service was given (``create_app(jobs=...)`` and the job queues
of its in-process worker), then any the store has rules for (a worker elsewhere started, or a
producer submitted to it), opened once and kept; any other name is 404. A queue whose
``Jobs`` has functions registered in this process refuses a job of any other function
(422), since this process's worker, or one running the same module, could never run it; a
queue opened from the store accepts any function name, which a worker elsewhere may know.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from redbatch.errors import ConfigError, NotFound
from redbatch.jobs import MAX_JOB_ID, Jobs, Member
from redbatch.jobtypes import Job
from redbatch.service.auth import require_token
from redbatch.service.errors import AUTH_RESPONSES, ERROR_RESPONSES
from redbatch.service.models import (
    CleanedUp,
    CleanupRequest,
    GroupProgressOut,
    GroupSubmit,
    GroupSubmitted,
    JobCounts,
    JobOut,
    JobPageOut,
    JobSubmit,
    Retried,
    RetryFailedRequest,
    Status,
    Submitted,
)
from redbatch.stores.base import JobStore, Store

MAX_PAGE = 1000
"""The most jobs one list returns."""


class JobRegistry:
    """The job queues the service knows: those it was given, then any the store has rules for.

    A queue found only in the store is opened with ``Jobs.open``: the attempts and lease its
    worker published, its other settings (lanes' head start, retention) the defaults.
    """

    def __init__(self, store: Store, queues: Iterable[Jobs] = ()) -> None:
        self.store = store
        self._queues: dict[str, Jobs] = {}
        for jobs in queues:
            if jobs.store is not store:
                raise ConfigError(f"{jobs!r} uses another store than the service ({store.url})")
            self._queues.setdefault(jobs.name, jobs)
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self._queues)

    def get(self, name: str) -> Jobs:
        """The queue ``name``; NotFound when neither given nor recorded in the store."""
        if not isinstance(self.store, JobStore):
            raise NotFound(f"no job queue {name!r}: the store {self.store.url} keeps no jobs")
        jobs = self._queues.get(name)
        if jobs is not None:
            return jobs
        try:
            opened = Jobs.open(self.store, name)
        except ConfigError:
            raise NotFound(f"no job queue {name!r}: not a valid queue name") from None
        with self._lock:
            return self._queues.setdefault(name, opened)


def check_functions(jobs: Jobs, names: Iterable[str]) -> None:
    """ConfigError (422) for a function ``jobs`` does not have, when it has any at all."""
    if not jobs.functions:
        return
    unknown = sorted(set(names) - set(jobs.functions))
    if unknown:
        known = ", ".join(sorted(jobs.functions))
        raise ConfigError(f"job queue {jobs.name!r} has no function {unknown[0]!r}; it has {known}")


def _queue(
    request: Request,
    queue: Annotated[str, Path(description="The job queue's name.", examples=["decisions"])],
) -> Jobs:
    registry: JobRegistry = request.app.state.jobs
    return registry.get(queue)


QueueDep = Annotated[Jobs, Depends(_queue)]
JobIdPath = Annotated[str, Path(description="The job's id (percent-encode a '/').")]
GroupIdPath = Annotated[str, Path(description="The group's id (percent-encode a '/').")]

JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {**ERROR_RESPONSES[404], "description": "Unknown job queue, job or group"},
}
LOCATION = {"Location": {"description": "The URL to poll.", "schema": {"type": "string"}}}

router = APIRouter(prefix="/jobs/{queue}", tags=["jobs"], responses=JOB_RESPONSES)
writes = APIRouter(
    prefix="/jobs/{queue}",
    tags=["jobs"],
    responses={**JOB_RESPONSES, 401: AUTH_RESPONSES[401]},
    dependencies=[Depends(require_token)],
)


def _url(request: Request, *parts: str) -> str:
    """A path under the service's root, each part percent-encoded ('/' included)."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return root + "/" + "/".join(quote(part, safe="") for part in parts)


def _known_id(read: Callable[[str], Any], value: str) -> Any:
    """``read(value)``, with an id no job could have (empty, over-long) a 404 like any unknown."""
    if not value or len(value) > MAX_JOB_ID:
        raise NotFound(f"no job or group {value[:40]!r}: ids are 1 to {MAX_JOB_ID} characters")
    return read(value)


# ---------------------------------------------------------------- jobs


@writes.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a job, or a chain",
    responses={202: {"description": "Stored; the id to poll", "headers": LOCATION}},
)
def submit(jobs: QueueDep, body: JobSubmit, request: Request, response: Response) -> Submitted:
    """Store one job (durable on return) for a worker to run; ``then`` makes it a chain.
    Submitting an id that exists changes nothing and answers the same."""
    check_functions(jobs, [body.function, *body.then])
    options: dict[str, Any] = {"id": body.id, "lane": body.lane, "delay": body.delay}
    options |= {"max_attempts": body.max_attempts, "timeout": body.timeout}
    if body.then:
        job_id = jobs.chain([(body.function, body.params), *body.then], **options)
    else:
        job_id = jobs.submit(body.function, body.params, **options)
    response.headers["Location"] = _url(request, "jobs", jobs.name, "id", job_id)
    return Submitted(id=job_id)


@router.get("", summary="List jobs, newest first")
def list_jobs(
    jobs: QueueDep,
    status: Annotated[Status | None, Query(description="Only jobs of this status.")] = None,
    group: Annotated[
        str | None, Query(min_length=1, max_length=MAX_JOB_ID, description="Only this group's members.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="The most jobs on this page.")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="The previous page's cursor, same status and group.")
    ] = None,
) -> JobPageOut:
    page = jobs.list(status, group, limit, cursor)
    return JobPageOut(jobs=[JobOut.of(job) for job in page.jobs], cursor=page.cursor)


@router.get("/counts", summary="How many jobs hold each status")
def counts(jobs: QueueDep) -> JobCounts:
    return JobCounts.model_validate(jobs.counts())


@writes.post("/cleanup", summary="Delete jobs that finished long enough ago")
def cleanup(jobs: QueueDep, body: CleanupRequest) -> CleanedUp:
    """Delete finished jobs (and whole finished groups) older than ``older_than`` seconds;
    pending and running ones are never deleted."""
    return CleanedUp(deleted=jobs.cleanup(body.older_than))


@router.get("/id/{job_id:path}", summary="A job's status, progress and result")
def get_job(jobs: QueueDep, job_id: JobIdPath) -> JobOut:
    job: Job = _known_id(jobs.get, job_id)
    return JobOut.of(job)


@writes.post("/id/{job_id:path}/cancel", summary="Cancel a job")
def cancel(jobs: QueueDep, job_id: JobIdPath) -> JobOut:
    """A pending job is cancelled at once; a running one is asked to stop (it sees
    ``ctx.cancelled``); a finished one is left as it is. Answers the job after the call."""
    job: Job = _known_id(jobs.cancel, job_id)
    return JobOut.of(job)


# ---------------------------------------------------------------- groups


@writes.post(
    "/groups",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a group of jobs",
    responses={202: {"description": "Stored; the group to poll", "headers": LOCATION}},
)
def submit_group(jobs: QueueDep, body: GroupSubmit, request: Request, response: Response) -> GroupSubmitted:
    """Store the members (calls or chains) and their group in one step; the ``callback``
    function runs once, as a job, when every member has finished (failed ones included).
    Submitting a group id that exists changes nothing."""
    names = [name for member in body.members for name in (member.function, *member.then)]
    check_functions(jobs, names + ([body.callback] if body.callback else []))
    members: list[Member] = []
    for m in body.members:
        first: tuple[str, Any] = (m.function, m.params)
        members.append([first, *m.then] if m.then else first)
    group_id = jobs.group(members, id=body.id, callback=body.callback, lane=body.lane)
    response.headers["Location"] = _url(request, "jobs", jobs.name, "groups", group_id)
    return GroupSubmitted(id=group_id, members=[f"{group_id}.{i}" for i in range(len(members))])


@router.get("/groups/{group_id:path}", summary="A group's progress")
def group_progress(jobs: QueueDep, group_id: GroupIdPath) -> GroupProgressOut:
    return GroupProgressOut.of(_known_id(jobs.progress, group_id))


@writes.post("/groups/{group_id:path}/retry-failed", summary="Run a group's failed members again")
def retry_failed(jobs: QueueDep, group_id: GroupIdPath, body: RetryFailedRequest | None = None) -> Retried:
    """Put the failed members back to pending (those whose error holds ``error_contains``
    and matches ``error_matches``, when given), in ``lane`` or each in its own. A finished
    group reopens, and its callback runs again when the new round ends."""
    body = body or RetryFailedRequest()
    where = _error_filter(body.error_contains, body.error_matches)
    return Retried(retried=_known_id(lambda g: jobs.retry_failed(g, where=where, lane=body.lane), group_id))


def _error_filter(contains: str | None, matches: str | None) -> Callable[[Job], bool] | None:
    if contains is None and matches is None:
        return None
    try:
        pattern = None if matches is None else re.compile(matches)
    except re.error as exc:
        raise ConfigError(f"error_matches is not a regular expression: {exc}") from None

    def where(job: Job) -> bool:
        if contains is not None and contains not in job.error:
            return False
        return pattern is None or pattern.search(job.error) is not None

    return where
