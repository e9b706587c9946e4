"""Story 5, decision processes: the Python side of the long "processes" the HTTP service
starts and polls (``POST /jobs/decisions`` submits ``decide``; ``GET /jobs/decisions/id/{id}``
reads its status, progress and result, also after a server restart, since all of it lives in
the store). ``redbatch serve --worker examples/decision_service.py`` serves it.

The same code runs on ``memory://`` in development, SQLite on one host and Redis in
production: only the store URL changes.
Run: python examples/decisions.py [STORE_URL]
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import redbatch

STAGES = ("gather evidence", "score options", "check policy", "decide")


def decisions(store: redbatch.Store, stage_seconds: float = 0.05, lease: float = 30.0) -> redbatch.Jobs:
    """The job queue ``decisions`` and its function ``decide``; ``lease`` is how soon another
    worker takes over the process of one that died."""
    jobs = redbatch.Jobs(store, "decisions", max_attempts=3, lease=lease, timeout=3600.0)

    @jobs.function
    def decide(params: dict[str, Any], ctx: redbatch.JobContext) -> dict[str, Any]:
        """A long process: one stage after another, reporting progress, stopping when asked."""
        options = list(params.get("options", ["approve", "reject"]))
        scores: dict[str, float] = {}
        for done, stage in enumerate(STAGES):
            if ctx.cancelled:
                raise redbatch.JobCancelled()
            ctx.progress(done / len(STAGES), stage)
            time.sleep(stage_seconds)  # the real work of the stage
            if stage == "score options":
                scores = {option: len(option) / 10 for option in options}
        best = max(options, key=lambda option: scores.get(option, 0.0))
        return {"case": params.get("case"), "decision": best, "scores": scores, "attempt": ctx.attempt}

    return jobs


def main(url: str | None = None) -> redbatch.Job:
    store = redbatch.connect(url or "memory://")
    jobs = decisions(store)
    worker = redbatch.Worker(store, [jobs], handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        job_id = jobs.submit("decide", {"case": "loan-42", "options": ["approve", "refer", "reject"]})
        job = jobs.wait(job_id, 30)
        print(f"{job.id}: {job.status}, {job.result}")
        print("listed:", [j.id for j in jobs.list(status="succeeded").jobs])
        print("cleaned up:", jobs.cleanup(older_than=0))
        return job
    finally:
        worker.stop()
        thread.join()
        store.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
