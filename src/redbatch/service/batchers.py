"""The batcher routes: add items, stats, peek, flush, clear, dead letters.

Each route is a thin call of one ``Batcher`` method; the library checks the input and raises
the typed errors that ``redbatch.service.errors`` maps to statuses. Routes are plain ``def``
functions: the store calls block, so FastAPI runs them on its thread pool, where concurrent
adds to one batcher share store calls (``redbatch.coalesce``) as threads of any program do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status

from redbatch.batcher import Batcher
from redbatch.checks import MAX_KEY_LENGTH, check_name
from redbatch.errors import ConfigError, NotFound
from redbatch.service.auth import require_token
from redbatch.service.errors import AUTH_RESPONSES, ERROR_RESPONSES
from redbatch.service.models import (
    Added,
    Cleared,
    ClearRequest,
    DeadLetterOut,
    DeadLetterPage,
    Flushed,
    FlushRequest,
    NewItem,
    NewItems,
    Pending,
    PendingList,
    Purged,
    PurgeRequest,
    Replayed,
    ReplayRequest,
    Stats,
)
from redbatch.stores.base import Store

MAX_PAGE = 1000
"""The most items or dead letters one read returns."""


class BatcherRegistry:
    """The batchers the service knows: those it was given, then any the store has rules for.

    A batcher found only in the store (``Batcher.open``: producers in other languages, a
    worker elsewhere) is opened once and kept, so concurrent adds to it share store calls.
    It follows the store's rules: when a worker publishes new ones, its next add adopts them.
    """

    def __init__(self, store: Store, batchers: Iterable[Batcher] = ()) -> None:
        self.store = store
        self._batchers = {batcher.name: batcher for batcher in batchers}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self._batchers)

    def get(self, name: str) -> Batcher:
        """The batcher ``name``; NotFound when neither given nor recorded in the store."""
        batcher = self._batchers.get(name)
        if batcher is not None:
            return batcher
        try:
            check_name(name)
        except ConfigError:
            raise NotFound(f"no batcher {name!r}: not a valid batcher name") from None
        opened = Batcher.open(self.store, name)  # NotFound when the store never saw it
        with self._lock:
            return self._batchers.setdefault(name, opened)


def _batcher(
    request: Request,
    name: Annotated[str, Path(description="The batcher's name.", examples=["feedback"])],
) -> Batcher:
    registry: BatcherRegistry = request.app.state.batchers
    return registry.get(name)


BatcherDep = Annotated[Batcher, Depends(_batcher)]
KeyQuery = Annotated[str, Query(min_length=1, max_length=MAX_KEY_LENGTH, description="The key.")]

router = APIRouter(prefix="/batchers/{name}", tags=["batchers"], responses=ERROR_RESPONSES)
writes = APIRouter(
    prefix="/batchers/{name}",
    tags=["batchers"],
    responses={**ERROR_RESPONSES, **AUTH_RESPONSES},
    dependencies=[Depends(require_token)],
)


@writes.post("/items", status_code=status.HTTP_202_ACCEPTED, summary="Add an item under a key")
def add_item(batcher: BatcherDep, body: NewItem) -> Added:
    """Store one item under its key, durably (as the store allows) before answering."""
    batcher.add(body.key, body.item)
    return Added(added=1)


@writes.post("/items/many", status_code=status.HTTP_202_ACCEPTED, summary="Add many items, all or none")
def add_items(batcher: BatcherDep, body: NewItems) -> Added:
    """Store (key, item) pairs in one store call; one bad pair stores nothing."""
    return Added(added=batcher.add_many((pair.key, pair.item) for pair in body.items))


@router.get("/stats", summary="The batcher's counters")
def stats(batcher: BatcherDep) -> Stats:
    return Stats.of(batcher.stats())


@router.get("/pending", summary="Peek at a key's waiting items")
def peek(
    batcher: BatcherDep,
    key: KeyQuery,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="The most items, oldest first.")] = 100,
) -> PendingList:
    """The oldest items waiting under ``key``, not those of a running batch."""
    return PendingList(key=key, items=[Pending.of(item) for item in batcher.peek(key, limit)])


@writes.post("/flush", summary="Make a key, or every idle key, due now")
def flush(batcher: BatcherDep, body: FlushRequest | None = None) -> Flushed:
    return Flushed(keys=batcher.flush(None if body is None else body.key))


@writes.post("/clear", summary="Drop a key's waiting items")
def clear(batcher: BatcherDep, body: ClearRequest) -> Cleared:
    """Drop the key's waiting items and any batch waiting to retry; a running one finishes."""
    return Cleared(cleared=batcher.clear(body.key))


@router.get("/dead-letters", summary="List dead letters, oldest first")
def dead_letters(
    batcher: BatcherDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeadLetterPage:
    # One more than asked tells whether another page follows.
    letters = batcher.dead_letters(limit=limit + 1, offset=offset)
    more = len(letters) > limit
    return DeadLetterPage(
        dead_letters=[DeadLetterOut.of(letter) for letter in letters[:limit]],
        next_offset=offset + limit if more else None,
    )


@writes.post("/dead-letters/replay", summary="Replay dead letters (by id, or all)")
def replay(batcher: BatcherDep, body: ReplayRequest) -> Replayed:
    """Put the letters back in front of their keys, due now; an unknown id replays nothing (404)."""
    if (body.ids is not None) == body.all:
        raise ConfigError('say which dead letters to replay: {"ids": [...]} or {"all": true}, one of them')
    return Replayed(replayed=batcher.replay(body.ids))


@writes.post("/dead-letters/purge", summary="Delete dead letters (by id, by age, or all)")
def purge(batcher: BatcherDep, body: PurgeRequest) -> Purged:
    """Delete letters; an unknown id deletes nothing (404)."""
    if sum((body.ids is not None, body.older_than is not None, body.all)) != 1:
        raise ConfigError(
            'say which dead letters to purge: {"ids": [...]}, {"older_than": SECONDS} or {"all": true},'
            " one of them"
        )
    return Purged(purged=batcher.purge_dead(body.ids, body.older_than))
