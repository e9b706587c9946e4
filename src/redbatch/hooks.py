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

A worker takes one ``hooks``; ``CombinedHooks(a, b, ...)`` is one that calls several (metrics
and tracing both on), each in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, ParamSpec

if TYPE_CHECKING:
    from redbatch.batcher import Batcher
    from redbatch.types import ClaimedBatch

P = ParamSpec("P")

log = logging.getLogger("redbatch.worker")

HandlerOutcome = Literal["succeeded", "failed", "timed_out"]
"""How a handler call ended: it returned, it raised, or it ran past the batcher's timeout."""

SettleOutcome = Literal["acked", "retried", "dead", "refused"]
"""What was written for a batch: done, retry later, dead-lettered, or refused because the
lease had passed to another worker (which now owns the batch)."""


class WorkerHooks:
    """No-op hooks; override the ones you need.

    Every hook is called on the worker's event loop thread, between the worker's own steps,
    so a hook must:

    - return quickly: it holds up every batch, heartbeat and claim of the worker while it
      runs, and a hook that blocks longer than a lease loses leases;
    - not block on I/O or on the store: hand slow work (an HTTP export) to a thread or a
      queue of its own;
    - not raise: an exception (``SystemExit`` included) is logged and ignored, and never
      fails a batch or stops the worker; only ``KeyboardInterrupt`` and
      ``asyncio.CancelledError`` propagate, as they would from the worker's own code.

    A hook may keep ``batcher`` and ``claimed`` (both are shared, and ``claimed`` is
    frozen) and may call ``Worker.stop``.

    ``claimed`` is the batch as the store handed it over: ``claimed.lease`` has the key,
    the batch id and the fencing token, ``claimed.attempt`` the attempt number, and
    ``claimed.arrived_at`` the arrival of each item (epoch milliseconds), for wait times.
    """

    def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        """This worker leased the batch; its handler starts next.

        Also called when this worker wins back the lease of a batch whose handler it still
        runs (a store outage stopped its heartbeats long enough for the lease to lapse):
        then no second handler starts, and the running one carries on under the new lease.

        Args:
            batcher: The batcher the batch belongs to.
            claimed: The batch as the store handed it over.
        """

    def handler_finished(
        self,
        batcher: Batcher,
        claimed: ClaimedBatch,
        duration: float,
        outcome: HandlerOutcome,
        error: BaseException | None,
    ) -> None:
        """The handler ended after ``duration`` seconds; ``error`` is what it raised, if anything.

        Called once per handler call, before its outcome is written. Not called for a batch
        whose data is too corrupt to hand over (it goes to dead letters without a call), nor
        for a call the worker abandons (a second signal).

        Args:
            batcher: The batcher the batch belongs to.
            claimed: The batch as it was claimed when the handler started.
            duration: The call's wall time in seconds (a monotonic clock): until it returned
                or raised, or until an async handler was cancelled at the batcher's
                ``timeout``. A sync handler cannot be stopped, so a timed-out one counts
                until its thread returned.
            outcome: ``"succeeded"`` (it returned), ``"failed"`` (it raised, ``ItemsFailed``
                included) or ``"timed_out"`` (it ran past the batcher's ``timeout``).
            error: What the handler raised when ``outcome`` is ``"failed"``; else None.
        """

    def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
        """The batch's outcome was written to the store (or refused there).

        Not called when the outcome could not be written (the store was unavailable: the
        lease lapses and the batch is retried) or the worker abandoned the batch.

        Args:
            batcher: The batcher the batch belongs to.
            claimed: The batch under the lease the outcome was written with.
            outcome: ``"acked"`` (done), ``"retried"`` (a retry is scheduled), ``"dead"``
                (moved to dead letters) or ``"refused"`` (the lease had passed to another
                worker, which now owns the batch; nothing was written).
        """

    def lease_lost(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        """A heartbeat found the batch leased to another worker; its handler still runs here.

        Its outcome will be refused (``batch_settled`` with ``"refused"``) unless this worker
        wins the lease back first (``batch_claimed`` again).

        Args:
            batcher: The batcher the batch belongs to.
            claimed: The batch under the lease that was lost.
        """


class CombinedHooks(WorkerHooks):
    """Several hooks as one: ``Worker(..., hooks=CombinedHooks(instruments.hooks, TracingHooks()))``.

    Each event goes to every hook, in the order given. One that raises is logged and
    skipped, and the ones after it still hear of the event, so a broken exporter cannot stop
    the metrics (only ``KeyboardInterrupt`` and ``asyncio.CancelledError`` propagate, as from
    the worker's own code).

    Args:
        *hooks: The hooks to call.

    Attributes:
        hooks: The hooks, in order.
    """

    def __init__(self, *hooks: WorkerHooks) -> None:
        self.hooks = hooks

    def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        for hook in self.hooks:
            _call(hook.batch_claimed, batcher, claimed)

    def handler_finished(
        self,
        batcher: Batcher,
        claimed: ClaimedBatch,
        duration: float,
        outcome: HandlerOutcome,
        error: BaseException | None,
    ) -> None:
        for hook in self.hooks:
            _call(hook.handler_finished, batcher, claimed, duration, outcome, error)

    def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
        for hook in self.hooks:
            _call(hook.batch_settled, batcher, claimed, outcome)

    def lease_lost(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        for hook in self.hooks:
            _call(hook.lease_lost, batcher, claimed)


def _call(hook: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
    """Call one hook as the worker does: its failure is logged, never passed on."""
    try:
        hook(*args, **kwargs)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except BaseException:
        log.exception("worker hook %s failed", getattr(hook, "__qualname__", hook))
