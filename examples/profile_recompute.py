"""Story 3, profile recompute queue: deduplicated ids, a periodic batch, and a last-batch
time and pending count that survive restarts.
Run: python examples/profile_recompute.py [STORE_URL]
"""

from __future__ import annotations

import sys
import threading
import time

import redbatch


def main(url: str | None = None) -> list[int]:
    store = redbatch.connect(url)
    recompute = redbatch.Batcher(store, "profiles", max_items=1000, max_wait=0.5, dedupe=True)
    recomputed: list[int] = []
    recompute.handler(lambda batch: recomputed.extend(batch.items))

    for profile_id in [7, 3, 7, 7, 3, 11]:  # profiles touched repeatedly
        recompute.add("all", profile_id)
    print("pending:", [p.value for p in recompute.peek("all")])  # [7, 3, 11]

    worker = redbatch.Worker(store, [recompute], handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while len(recomputed) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join()
    stats = recompute.stats()  # read back from the store: survives restarts
    print(f"recomputed {recomputed}; pending {stats.buffered_items}; last batch at {stats.last_flush_at}")
    store.close()
    return recomputed


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
