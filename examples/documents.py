"""Story 4, the document pipeline: a group of 1,000 chains (extract -> chunk -> entities),
live progress, a completion callback exactly once, and a retry of only the documents that
failed for a transient reason, in the high lane.

Run the whole story in one process:   python examples/documents.py [STORE_URL] [DOCS]
Run a worker for it (any number):     python examples/documents.py --worker STORE_URL RECORD [PREFIX]

Documents whose number ends in 7 fail for good ("permanent"); every 50th fails for a
transient reason (an outage) until the file ``outage-over`` appears beside RECORD, so
retrying only the transient failures after the outage turns them into successes. Each job
gets three attempts (a worker killed under it counts as one). The callback appends one line
to RECORD.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

import redbatch

ROUND_WAIT = 120.0


def pipeline(store: redbatch.Store, record: Path, lease: float = 5.0) -> redbatch.Jobs:
    """The job queue of the story, with its four functions."""
    jobs = redbatch.Jobs(store, "documents", max_attempts=3, lease=lease, backoff=0.05)

    @jobs.function
    def extract(params: dict[str, Any], ctx: redbatch.JobContext) -> dict[str, Any]:
        doc = params["doc"]
        if doc % 10 == 7:
            raise ValueError(f"permanent: document {doc} is not a PDF")
        if doc % 50 == 0 and not (record.parent / "outage-over").exists():
            raise ConnectionError(f"transient: the store of document {doc} timed out")
        return {"doc": doc, "text": f"text of document {doc}"}

    @jobs.function
    def chunk(extracted: dict[str, Any], ctx: redbatch.JobContext) -> dict[str, Any]:
        return {"doc": extracted["doc"], "chunks": extracted["text"].split()}

    @jobs.function
    def entities(chunked: dict[str, Any], ctx: redbatch.JobContext) -> dict[str, Any]:
        return {"doc": chunked["doc"], "entities": len(chunked["chunks"])}

    @jobs.function
    def report(done: redbatch.GroupDone, ctx: redbatch.JobContext) -> int:
        line = {"job": ctx.job_id, "round": done.progress.round, "total": done.progress.total}
        line |= {"succeeded": done.progress.succeeded, "failed": sorted(done.failed), "pid": os.getpid()}
        with open(record, "ab") as out:
            out.write(orjson.dumps(line) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        return done.progress.failed

    return jobs


def submit(jobs: redbatch.Jobs, docs: int, group_id: str = "docs") -> str:
    """The group: one chain per document, with ``report`` as its callback."""
    chains = [[("extract", {"doc": doc}), "chunk", "entities"] for doc in range(docs)]
    return jobs.group(chains, id=group_id, callback="report")


def retry_transient(jobs: redbatch.Jobs, group_id: str, record: Path) -> int:
    """The outage is over: retry only the documents that failed for a transient reason,
    ahead of other work."""
    (record.parent / "outage-over").touch()
    return jobs.retry_failed(group_id, where=lambda job: "transient" in job.error, lane="high")


def wait_for_round(jobs: redbatch.Jobs, group_id: str, round_: int, show: bool = False) -> None:
    """Wait (polling, with live progress) until the round's callback job has finished."""
    deadline = time.monotonic() + ROUND_WAIT
    while True:
        progress = jobs.progress(group_id)
        if show:
            print(f"\r{progress.percent:5.1f}% done, {progress.failed} failed", end="", flush=True)
        if progress.round == round_ and progress.finished_at is not None:
            jobs.wait(progress.callback_job, max(0.0, deadline - time.monotonic()))
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"round {round_} of group {group_id} did not finish in time")
        time.sleep(0.05)
    if show:
        print()


def main(url: str | None = None, docs: int = 1000, workdir: Path | None = None) -> list[dict[str, Any]]:
    """The whole story in one process, with an in-process worker; returns the callbacks' lines."""
    logging.getLogger("redbatch").setLevel(logging.ERROR)  # the failing documents are expected
    store = redbatch.connect(url or "memory://")
    workdir = workdir or Path(os.environ.get("TMPDIR", "/tmp")) / f"documents-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    record = workdir / "callbacks.jsonl"
    jobs = pipeline(store, record)
    worker = redbatch.Worker(store, [jobs], concurrency=16, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        started = time.perf_counter()
        group_id = submit(jobs, docs)
        wait_for_round(jobs, group_id, 1, show=True)
        print(f"group of {docs} chains: {time.perf_counter() - started:.2f} s on {store.url}")
        print(f"retrying {retry_transient(jobs, group_id, record)} transient failures in the high lane")
        wait_for_round(jobs, group_id, 2)
    finally:
        worker.stop()
        thread.join()
        store.close()
    lines = [orjson.loads(line) for line in record.read_bytes().splitlines()]
    for line in lines:
        print(
            f"callback of round {line['round']}: {line['succeeded']} succeeded, {len(line['failed'])} failed"
        )
    return lines


def run_worker(url: str, record: str, prefix: str | None = None) -> None:
    """A worker process for the story (tests start these, and SIGKILL one midway)."""
    store = redbatch.connect(url, **({"prefix": prefix} if prefix else {}))
    jobs = pipeline(store, Path(record), lease=float(os.environ.get("DOCUMENTS_LEASE", "1.0")))
    worker = redbatch.Worker(store, [jobs], concurrency=8)

    def announce() -> None:
        worker.started.wait()
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    worker.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        run_worker(*sys.argv[2:5])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else None, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
