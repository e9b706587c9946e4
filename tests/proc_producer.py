"""A producer process for crash tests: threads (or coroutines) adding at once, each recording
what returned.

Usage: python -m tests.proc_producer URL PREFIX FOLDER [--threads 16] [--name producers] [--asyncio]

Thread ``t`` adds ``[t, n]`` under key ``t{t}`` for n = 0, 1, ..., and appends ``n`` to
``FOLDER/returned-{t}`` (fsynced) only once its ``add`` has returned: the file lists what the
producer was promised is durable. With ``--asyncio``, ``--threads`` coroutines of one event
loop do the same with ``add_async``. It runs until killed (or 120 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

import redbatch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--name", default="producers")
    parser.add_argument("--asyncio", action="store_true", help="coroutines with add_async, not threads")
    args = parser.parse_args()
    options = {"prefix": args.prefix} if args.url.startswith("redis") else {}
    store = redbatch.connect(args.url, **options)
    batcher = redbatch.Batcher(store, args.name, max_items=1_000_000, max_wait=3600)
    end = time.monotonic() + 120

    def produce(thread: int) -> None:
        path = os.path.join(args.folder, f"returned-{thread}")
        record = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        n = 0
        while time.monotonic() < end:
            batcher.add(f"t{thread}", [thread, n])
            os.write(record, b"%d\n" % n)
            os.fsync(record)
            n += 1

    async def produce_async(coroutine: int) -> None:
        path = os.path.join(args.folder, f"returned-{coroutine}")
        record = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        n = 0
        while time.monotonic() < end:
            await batcher.add_async(f"t{coroutine}", [coroutine, n])
            os.write(record, b"%d\n" % n)
            os.fsync(record)
            n += 1

    async def coroutines() -> None:
        await asyncio.gather(*(produce_async(c) for c in range(args.threads)))

    if args.asyncio:
        asyncio.run(coroutines())
        return
    threads = [threading.Thread(target=produce, args=(t,)) for t in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
