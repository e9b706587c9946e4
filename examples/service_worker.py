"""A worker module for ``redbatch serve --worker examples/service_worker.py`` (the README's
"HTTP service"): items added over HTTP to ``feedback`` are printed, ten per batch or every
five seconds."""

from __future__ import annotations

import redbatch

store = redbatch.connect()
feedback = redbatch.Batcher(store, "feedback", max_items=10, max_wait=5)


@feedback.handler
def save(batch: redbatch.Batch) -> None:
    print(f"{batch.key}: {len(batch.items)} items: {batch.items}", flush=True)
