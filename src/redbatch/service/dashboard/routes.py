"""The dashboard's routes: the page at ``/``, the fragments it polls, its static files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader

from redbatch.batcher import Batcher
from redbatch.errors import NotFound, RedbatchError
from redbatch.jobs import Jobs
from redbatch.stores.base import JobStore
from redbatch.types import CorruptItem

DEAD_PAGE = 20
"""Dead letters per page."""
OLDEST_KEYS = 10
"""Keys listed by the age of their oldest item."""
RECENT_JOBS = 10
"""Jobs listed per queue, newest first."""
GROUP_SCAN = 200
"""Recent jobs read to find the groups shown: those of the newest members."""
GROUPS_SHOWN = 5
MAX_TEXT = 200
"""Characters of an item or an error shown before it is cut."""
POLL_MS = 1000
"""How often the page refreshes its fragments."""

# No inline script or style: whatever slips into the HTML cannot run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

router = APIRouter(include_in_schema=False)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _since(moment: float | None) -> str:
    return "-" if moment is None else _ago(max(0.0, time.time() - moment))


def _clock(moment: float | None) -> str:
    return "" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clip(text: str, width: int = MAX_TEXT) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _json(value: Any) -> str:
    """An item as one line of JSON, for display (escaped by the template like any text)."""
    if isinstance(value, CorruptItem):
        return f"<corrupt: {value.raw.decode(errors='replace')}>"
    return _clip(orjson.dumps(value).decode())


def _last_line(error: str) -> str:
    return _clip((error.strip().splitlines() or [""])[-1])


templates = Environment(
    loader=PackageLoader("redbatch.service.dashboard", "templates"),
    autoescape=True,  # every template, whatever its name: keys and items are user data
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(ago=_ago, since=_since, clock=_clock, json=_json, last_line=_last_line)


def _html(template: str, **values: Any) -> HTMLResponse:
    body = templates.get_template(template).render(poll_ms=POLL_MS, **values)
    return HTMLResponse(body, headers=SECURITY_HEADERS)


# ---------------------------------------------------------------- what the page reads


def _batchers(request: Request) -> list[Batcher]:
    registry = request.app.state.batchers
    return [registry.get(name) for name in registry.names]


def _selected(request: Request, name: str | None) -> tuple[Batcher | None, str]:
    """The batcher the page details, and a note when the one asked for is unknown."""
    if name:
        try:
            return request.app.state.batchers.get(name), ""
        except NotFound as exc:
            return None, str(exc)
    known = request.app.state.batchers.names
    return (request.app.state.batchers.get(known[0]), "") if known else (None, "")


def job_queues(request: Request) -> list[Jobs]:
    """The job queues the service knows: its in-process worker's, and any the app lists in
    ``app.state.job_queues`` (the jobs routes' own, when the service has them)."""
    found: dict[str, Jobs] = {}
    runner = request.app.state.worker
    served = [] if runner is None else runner.worker.batchers
    for queue in [*served, *getattr(request.app.state, "job_queues", ())]:
        if isinstance(queue, Jobs):
            found.setdefault(queue.name, queue)
    return [found[name] for name in sorted(found)]


def _batcher_rows(request: Request) -> Iterator[dict[str, Any]]:
    for batcher in _batchers(request):
        try:
            yield {"name": batcher.name, "stats": batcher.stats(), "error": ""}
        except RedbatchError as exc:
            yield {"name": batcher.name, "stats": None, "error": f"{type(exc).__name__}: {exc}"}


def _detail(batcher: Batcher, offset: int) -> dict[str, Any]:
    letters = batcher.dead_letters(limit=DEAD_PAGE + 1, offset=offset)  # one more: is there a next page?
    return {
        "batcher": batcher,
        "stats": batcher.stats(),
        "oldest": batcher.oldest_keys(OLDEST_KEYS),
        "letters": letters[:DEAD_PAGE],
        "offset": offset,
        "previous": max(0, offset - DEAD_PAGE) if offset else None,
        "next": offset + DEAD_PAGE if len(letters) > DEAD_PAGE else None,
        "page_size": DEAD_PAGE,
    }


def _queue_view(queue: Jobs) -> dict[str, Any]:
    if not isinstance(queue.store, JobStore):
        return {"name": queue.name, "error": f"the store {queue.store.url} does not keep jobs"}
    recent = queue.list(limit=GROUP_SCAN)
    groups: list[str] = []
    for job in recent.jobs:
        if job.group and job.group not in groups:
            groups.append(job.group)
    progress = []
    for group in groups[:GROUPS_SHOWN]:
        try:
            progress.append(queue.progress(group))
        except NotFound:  # cleaned up since the list was read
            continue
    return {
        "name": queue.name,
        "error": "",
        "counts": queue.counts(),
        "jobs": recent.jobs[:RECENT_JOBS],
        "groups": progress,
    }


def _jobs_views(request: Request) -> list[dict[str, Any]]:
    views = []
    for queue in job_queues(request):
        try:
            views.append(_queue_view(queue))
        except RedbatchError as exc:
            views.append({"name": queue.name, "error": f"{type(exc).__name__}: {exc}"})
    return views


# ---------------------------------------------------------------- routes

BatcherQuery = Annotated[str | None, Query(max_length=64)]
OffsetQuery = Annotated[int, Query(ge=0)]


@router.get("/", response_class=HTMLResponse)
def page(request: Request, batcher: BatcherQuery = None, offset: OffsetQuery = 0) -> HTMLResponse:
    selected, note = _selected(request, batcher)
    return _html(
        "page.html",
        store=request.app.state.store.url,
        rows=list(_batcher_rows(request)),
        detail=None if selected is None else _detail(selected, offset),
        note=note,
        queues=_jobs_views(request),
    )


@router.get("/dashboard/batchers", response_class=HTMLResponse)
def batchers_fragment(request: Request, batcher: BatcherQuery = None) -> HTMLResponse:
    return _html("batchers.html", rows=list(_batcher_rows(request)), selected=batcher)


@router.get("/dashboard/detail", response_class=HTMLResponse)
def detail_fragment(request: Request, batcher: BatcherQuery = None, offset: OffsetQuery = 0) -> HTMLResponse:
    selected, note = _selected(request, batcher)
    return _html("detail.html", detail=None if selected is None else _detail(selected, offset), note=note)


@router.get("/dashboard/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request) -> HTMLResponse:
    return _html("jobs.html", queues=_jobs_views(request))


@router.get("/dashboard/static/{name}")
def static(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    body = resources.files("redbatch.service.dashboard").joinpath("static", name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})
