"""Story 2, feedback aggregation across pods: per-agent batches of 10 or 5 minutes,
written in bulk, with several worker processes and a graceful shutdown.

In production each pod runs ``redbatch worker examples.feedback_pods`` (SIGTERM finishes
in-flight batches and leaves the rest durable for the other pods). This module defines
the batcher and its bulk writer; ``main`` produces a burst and runs two worker processes.
Run: python examples/feedback_pods.py [STORE_URL]  (a durable store: sqlite or redis)
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import redbatch

SINK = Path(os.environ.get("FEEDBACK_SINK", "feedback-sink.db"))
store = redbatch.connect()
feedback = redbatch.Batcher(store, "feedback", max_items=10, max_wait=300)


@feedback.handler
def bulk_write(batch: redbatch.Batch) -> None:
    """One transaction per batch; the batch id makes the write idempotent on retries."""
    with sqlite3.connect(SINK, timeout=30) as db:
        db.execute("CREATE TABLE IF NOT EXISTS feedback (batch TEXT, agent TEXT, n INT, reply TEXT)")
        if db.execute("SELECT 1 FROM feedback WHERE batch = ?", (batch.id,)).fetchone():
            return  # already written by an earlier attempt
        rows = [(batch.id, batch.key, item["n"], item["reply"]) for item in batch.items]
        db.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?)", rows)


def main() -> int:
    feedback.add_many([(f"agent-{n % 7}", {"n": n, "reply": "thanks"}) for n in range(70)])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    pods = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "redbatch"), "worker", "examples.feedback_pods"], env=env
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 30
    while feedback.stats().flushed_items < 70 and time.monotonic() < deadline:
        time.sleep(0.05)
    for pod in pods:
        pod.send_signal(signal.SIGTERM)  # graceful: nothing stranded
    for pod in pods:
        pod.wait(30)
    with sqlite3.connect(SINK) as db:
        written = db.execute("SELECT COUNT(DISTINCT n) FROM feedback").fetchone()[0]
    print(f"{written} feedback rows written by {len(pods)} pods")
    return int(written)


if __name__ == "__main__":
    main()
