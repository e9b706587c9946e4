"""A worker process for crash tests: records every batch it starts and finishes to a file.

Usage: python -m tests.proc_worker URL PREFIX RECORD_FILE [--block-key KEY]
With --block-key, a batch of that key blocks until the process is killed (or 60 s).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import orjson

import redbatch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("record")
    parser.add_argument("--block-key", default=None)
    parser.add_argument("--lease", type=float, default=1.0)
    args = parser.parse_args()
    options = {"prefix": args.prefix} if args.url.startswith("redis") else {}
    store = redbatch.connect(args.url, **options)
    batcher = redbatch.Batcher(store, "procs", max_items=25, max_wait=0.05, lease=args.lease)
    record = open(args.record, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process

    def write(event: str, batch: redbatch.Batch) -> None:
        line = {"event": event, "id": batch.id, "key": batch.key, "attempt": batch.attempt}
        line |= {"items": batch.items, "pid": os.getpid(), "t": time.time()}
        record.write(orjson.dumps(line) + b"\n")
        os.fsync(record.fileno())

    @batcher.handler
    def handle(batch: redbatch.Batch) -> None:
        write("start", batch)
        if batch.key == args.block_key and batch.attempt == 1:
            time.sleep(60)  # killed before this returns
        time.sleep(0.002)
        write("end", batch)

    worker = redbatch.Worker(store, [batcher], concurrency=4)

    def announce() -> None:  # signal handlers are installed once the worker has started
        worker.started.wait()
        record.write(orjson.dumps({"event": "ready", "pid": os.getpid()}) + b"\n")

    threading.Thread(target=announce, daemon=True).start()
    worker.run()


if __name__ == "__main__":
    main()
