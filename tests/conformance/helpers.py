"""Drive a store through a Batcher step by step, with the test clock, no worker threads."""

from __future__ import annotations

from typing import Any

from redbatch import Batcher
from redbatch.stores.base import Store
from redbatch.types import ClaimedBatch
from redbatch.worker import decode_batch
from tests.conftest import FakeClock


def make(store: Store, clock: FakeClock, name: str = "b", **options: Any) -> Batcher:
    options.setdefault("max_items", 10)
    options.setdefault("max_wait", 5.0)
    options.setdefault("lease", 10.0)
    return Batcher(store, name, clock=clock, **options)


def claim(batcher: Batcher, limit: int = 100) -> list[ClaimedBatch]:
    return batcher.store.claim_due(batcher.spec, batcher.clock(), limit)


def claim_one(batcher: Batcher) -> ClaimedBatch:
    claimed = claim(batcher, 1)
    assert len(claimed) == 1, claimed
    return claimed[0]


def items(claimed: ClaimedBatch) -> list[Any]:
    return decode_batch(claimed).items


def ack(batcher: Batcher, claimed: ClaimedBatch) -> bool:
    (held,) = batcher.store.ack(batcher.spec, [claimed.lease], batcher.clock())
    return held


def fail(batcher: Batcher, claimed: ClaimedBatch, error: str = "boom", retry_in: float | None = 1.0) -> bool:
    now = batcher.clock()
    retry_at = None if retry_in is None else now + round(retry_in * 1000)
    return batcher.store.fail(batcher.spec, claimed.lease, now, error, retry_at)
