"""Worker hooks: where metrics and tracing plug into a worker without editing it.

Subclass ``WorkerHooks``, override the methods you need and pass an instance as
``Worker(..., hooks=...)``. Every hook runs on the worker's event loop, so it must be quick
(count, observe, start or end a span), never block. A hook that raises is logged and
ignored: it never fails a batch or stops the worker.

Each attempt this worker makes goes through ``batch_claimed``, ``handler_finished`` and
``batch_settled``, except that data too corrupt to hand over skips ``handler_finished``, and
an attempt the worker abandons (a second signal) or cannot record (the store is down) ends
without ``batch_settled``: its lease lapses. ``lease_lost`` comes in between when a
heartbeat finds another worker took the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from redbatch.batcher import Batcher
    from redbatch.types import ClaimedBatch

HandlerOutcome = Literal["succeeded", "failed", "timed_out"]
"""How a handler call ended: it returned, it raised, or it ran past the batcher's timeout."""

SettleOutcome = Literal["acked", "retried", "dead", "refused"]
"""What was written for a batch: done, retry later, dead-lettered, or refused because the
lease had passed to another worker (which now owns the batch)."""


class WorkerHooks:
    """No-op hooks; override the ones you need.

    ``claimed`` is the batch as the store handed it over: ``claimed.lease`` has the key,
    the batch id and the fencing token, ``claimed.attempt`` the attempt number, and
    ``claimed.arrived_at`` the arrival of each item (epoch milliseconds), for wait times.
    """

    def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        """This worker leased the batch; its handler starts next."""

    def handler_finished(
        self,
        batcher: Batcher,
        claimed: ClaimedBatch,
        duration: float,
        outcome: HandlerOutcome,
        error: BaseException | None,
    ) -> None:
        """The handler ended after ``duration`` seconds; ``error`` is what it raised, if anything."""

    def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
        """The batch's outcome was written to the store (or refused there)."""

    def lease_lost(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        """A heartbeat found the batch leased to another worker; its handler still runs here."""
