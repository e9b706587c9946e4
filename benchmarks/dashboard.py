"""The dashboard's page time with 100,000 open keys and 200,000 dead letters (issue 9).

Fills a fresh store, SQLite and/or Redis, then times the dashboard's page and the fragments
it polls, served in-process (Starlette's TestClient: routing, store reads and rendering,
no network). The open keys are added through ``Batcher.add_many``; the dead letters are
written straight into the store's own layout (the rows and keys its ``fail`` writes), since
200,000 real failures take minutes and the page only reads them::

    python -m benchmarks.dashboard [--stores sqlite,redis] [--keys 100000] [--dead 200000]

Redis needs ``redis-server`` on the PATH; a private one is started on a free port.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

import redbatch
from redbatch.stores.base import Store
from redbatch.types import QueueSpec

CHUNK = 5000
ROUNDS = 20


def fill_keys(batcher: redbatch.Batcher, keys: int) -> None:
    for start in range(0, keys, CHUNK):
        batcher.add_many(
            (f"key-{n:06d}", {"n": n, "text": "hello"}) for n in range(start, min(keys, start + CHUNK))
        )


def dead_sqlite(store: Store, spec: QueueSpec, count: int, now_ms: int) -> None:
    # A benchmark fixture: the store's own write transaction, its rows written directly.
    with store._write(spec.name) as tx:  # type: ignore[attr-defined]
        cur = tx.cur
        for start in range(0, count, CHUNK):
            ids = [f"dead{n:08d}" for n in range(start, min(count, start + CHUNK))]
            cur.executemany(
                "INSERT INTO dead_letters VALUES (?, ?, ?, 3, ?, ?, ?)",
                [(i, spec.name, f"dead-key-{i}", "ValueError: boom", now_ms - 5000, now_ms) for i in ids],
            )
            cur.executemany(
                "INSERT INTO batch_items (batch_id, arrived_at, digest, payload) VALUES (?, ?, '', ?)",
                [(i, now_ms - 5000, b'{"text":"a dead item"}') for i in ids],
            )
        tx.add(dead=count)


def dead_redis(store: Store, spec: QueueSpec, count: int, now_ms: int) -> None:
    client = store.client  # type: ignore[attr-defined]
    part = store._partitions(spec.name)[0]  # type: ignore[attr-defined]
    for start in range(0, count, CHUNK):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + CHUNK)):
            bid = f"dead{n:08d}"
            pipe.hset(
                f"{part.base}x:{bid}",
                mapping={
                    "key": f"dead-key-{bid}",
                    "attempts": 3,
                    "error": "ValueError: boom",
                    "created": now_ms - 5000,
                    "died": now_ms,
                    "tok": 1,
                },
            )
            pipe.rpush(f"{part.base}xi:{bid}", f'{now_ms - 5000}::{{"text":"a dead item"}}')
            pipe.zadd(part.dead, {bid: now_ms})
        pipe.execute()


def timed(call: Callable[[], object]) -> tuple[float, float]:
    call()  # warm
    runs = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), max(runs)


def measure(url: str, keys: int, dead: int, filler: Callable[[Store, QueueSpec, int, int], None]) -> None:
    store = redbatch.connect(url)
    batcher = redbatch.Batcher(store, "bench", max_wait=3600)
    started = time.perf_counter()
    fill_keys(batcher, keys)
    filler(store, batcher.spec, dead, batcher.clock())
    stats = batcher.stats()
    print(
        f"\n{store.url}: {stats.open_keys:,} open keys, {stats.dead:,} dead letters "
        f"(filled in {time.perf_counter() - started:.0f} s)"
    )
    client = TestClient(redbatch.service.create_app(store, [batcher]))
    last = (dead // 20 - 1) * 20
    print(f"{'request':58} {'median ms':>10} {'max ms':>8}")
    for path in (
        "/",
        "/dashboard/batchers",
        "/dashboard/detail?batcher=bench",
        f"/dashboard/detail?batcher=bench&offset={dead // 2}",
        f"/dashboard/detail?batcher=bench&offset={last}",
    ):
        assert client.get(path).status_code == 200
        median, worst = timed(lambda p=path: client.get(p))
        print(f"GET {path:54} {median:10.1f} {worst:8.1f}")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--dead", type=int, default=200_000)
    args = parser.parse_args()
    import redbatch.service  # noqa: PLC0415, F401 - FastAPI only here

    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            if kind == "sqlite":
                measure(f"sqlite:///{Path(tmp) / 'dash.db'}", args.keys, args.dead, dead_sqlite)
            elif kind == "redis":
                from tests.servers import RedisServer, free_port  # noqa: PLC0415

                (Path(tmp) / "redis").mkdir()
                server = RedisServer(free_port(), Path(tmp) / "redis").start()
                try:
                    measure(server.url, args.keys, args.dead, dead_redis)
                finally:
                    server.stop()


if __name__ == "__main__":
    main()
