"""The things measured (redbatch on each store, the baselines, the ceilings) and a uniform
way to produce items into any of them, in this process or in spawned producer processes."""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis

import redbatch
from benchmarks.baselines.list_lock import ListLockBatcher
from benchmarks.baselines.per_item import PerItemBatcher
from benchmarks.baselines.raw_redis import RawRpush
from benchmarks.items import encode, keyed_items
from benchmarks.ledger import Ledger
from benchmarks.redis_server import admin_client

REDBATCH_REDIS = "redbatch · Redis"
REDBATCH_CLUSTER = "redbatch · Redis Cluster"
REDBATCH_SQLITE = "redbatch · SQLite"
REDBATCH_MEMORY = "redbatch · memory"
PER_ITEM = "per-item round trips"
LIST_LOCK = "list + lock"
CELERY = "celery-batches"
RAW = "raw RPUSH (Python)"
RAW_SQLITE = "raw executemany (SQLite)"
REDIS_BENCHMARK = "redis-benchmark"

REDBATCH_SUBJECTS = (REDBATCH_REDIS, REDBATCH_CLUSTER, REDBATCH_SQLITE, REDBATCH_MEMORY)


def sqlite_available() -> bool:
    """The SQLite store is being written; its rows are skipped until the module exists."""
    try:
        return importlib.util.find_spec("redbatch.stores.sqlite") is not None
    except ModuleNotFoundError:
        return False


@dataclass
class StoreTarget:
    """A redbatch store under test, and how to get an empty one for each run."""

    subject: str
    redis_url: str = ""
    workdir: Path | None = None
    shared: bool = True
    """False for the memory store: it cannot be shared with worker or producer processes."""
    _counter: itertools.count[int] | None = None
    node_urls: tuple[str, ...] = ()
    """Redis Cluster: each master's own ``redis://`` URL, to empty them."""

    def fresh(self) -> str:
        """An empty store's URL (Redis: database 0 flushed; a cluster: every master flushed;
        SQLite: a new file)."""
        if self.subject == REDBATCH_CLUSTER:
            for node in self.node_urls:
                with admin_client(node) as client:
                    client.flushall()
            return self.redis_url
        if self.subject == REDBATCH_REDIS:
            with admin_client(self.redis_url) as client:
                client.flushdb()
            return self.redis_url
        if self.subject == REDBATCH_SQLITE:
            assert self.workdir is not None
            if self._counter is None:
                self._counter = itertools.count()
            path = self.workdir / f"bench-{next(self._counter)}.db"
            return f"sqlite:///{path}"
        return "memory://"


def store_targets(redis_url: str, workdir: Path, *, with_memory: bool = False) -> list[StoreTarget]:
    targets = [StoreTarget(REDBATCH_REDIS, redis_url=redis_url)]
    if sqlite_available():
        targets.append(StoreTarget(REDBATCH_SQLITE, workdir=workdir))
    if with_memory:
        targets.append(StoreTarget(REDBATCH_MEMORY, shared=False))
    return targets


# ---------------------------------------------------------------------- producing


@dataclass(frozen=True, slots=True)
class AdderSpec:
    """Everything a producer needs to build its adder; picklable for spawned processes."""

    subject: str
    redis_url: str
    stats_url: str = ""
    store_url: str = ""
    name: str = "bench"
    max_items: int = 100
    max_wait: float = 60.0
    record: str = "none"
    """What baseline handlers write to the ledger: "none", "count" or "seqs"."""
    flush_when_full: bool = False
    """per-item: the producer flushes a key it filled."""
    process_in_background: bool = False
    """list + lock: the producer that takes the lock processes the chat on a thread."""


class Adder(Protocol):
    pre_encoded: bool

    def add(self, key: str, item: Any) -> None: ...

    def close(self) -> None: ...


class RedbatchAdder:
    """``Batcher.add`` / ``Batcher.add_many`` on a store opened by URL."""

    pre_encoded = False

    def __init__(self, spec: AdderSpec, store: redbatch.Store | None = None) -> None:
        self.store = store or redbatch.connect(spec.store_url)
        self.batcher = redbatch.Batcher(
            self.store, spec.name, max_items=spec.max_items, max_wait=spec.max_wait
        )

    def add(self, key: str, item: Any) -> None:
        self.batcher.add(key, item)

    def add_many(self, pairs: Sequence[tuple[str, Any]]) -> None:
        self.batcher.add_many(pairs)

    def close(self) -> None:
        self.store.close()


def _recorder(ledger: Ledger | None, record: str) -> Any:
    def handle(key: str, items: list[Any], *_: Any) -> None:
        if ledger is None or record == "none":
            return
        if record == "seqs":
            ledger.record(len(items), seqs=[item["seq"] for item in items])
        else:
            ledger.record(len(items))

    return handle


class PerItemAdder:
    pre_encoded = False

    def __init__(self, spec: AdderSpec) -> None:
        self.client = redis.Redis.from_url(spec.redis_url)
        self.ledger = Ledger(spec.stats_url) if spec.record != "none" else None
        self.batcher = PerItemBatcher(
            self.client,
            max_items=spec.max_items,
            max_wait=spec.max_wait,
            handler=_recorder(self.ledger, spec.record),
            flush_when_full=spec.flush_when_full,
        )

    def add(self, key: str, item: Any) -> None:
        self.batcher.add(key, item)

    def close(self) -> None:
        self.client.close()
        if self.ledger is not None:
            self.ledger.close()


class ListLockAdder:
    pre_encoded = False

    def __init__(self, spec: AdderSpec) -> None:
        self.client = redis.Redis.from_url(spec.redis_url)
        self.ledger = Ledger(spec.stats_url) if spec.record != "none" else None
        self.pool: ThreadPoolExecutor | None = None
        if spec.process_in_background:
            self.pool = ThreadPoolExecutor(4, thread_name_prefix="list-lock")
            pool = self.pool

            def dispatch(job: Callable[[], None]) -> None:
                pool.submit(job)

            self.batcher = ListLockBatcher(
                self.client, handler=_recorder(self.ledger, spec.record), dispatch=dispatch
            )
        else:
            self.batcher = ListLockBatcher(self.client)

    def add(self, key: str, item: Any) -> None:
        self.batcher.add(key, item)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.client.close()
        if self.ledger is not None:
            self.ledger.close()


def make_adder(spec: AdderSpec) -> Adder:
    if spec.subject in REDBATCH_SUBJECTS:
        return RedbatchAdder(spec)
    if spec.subject == PER_ITEM:
        return PerItemAdder(spec)
    if spec.subject == LIST_LOCK:
        return ListLockAdder(spec)
    if spec.subject == RAW:
        return RawRpush(redis.Redis.from_url(spec.redis_url))
    if spec.subject == CELERY:
        # Imported here: Celery is slow to import and only its producers need it.
        from benchmarks.baselines.celery_batches_app import CeleryProducer  # noqa: PLC0415

        return CeleryProducer(spec.redis_url)
    raise ValueError(f"no adder for {spec.subject!r}")


@dataclass(frozen=True, slots=True)
class Span:
    """When one producer started and finished, in unix seconds, and how many it added."""

    started: float
    finished: float
    items: int


def produce_with(
    adder: Adder, start_seq: int, count: int, keys: int, size: int, *, warmup: int = 0, barrier: Any = None
) -> Span:
    """Add ``count`` items round-robin over ``keys``, one ``add`` call each."""
    pairs: list[tuple[str, Any]] = keyed_items(start_seq, count, size, keys)
    if adder.pre_encoded:
        pairs = [(key, encode(item)) for key, item in pairs]
    for i in range(warmup):
        warm = keyed_items(-1 - i, 1, size, 1)[0][1]
        adder.add("warmup", encode(warm) if adder.pre_encoded else warm)
    if barrier is not None:
        barrier.wait(timeout=120)
    started = time.time()
    for key, item in pairs:
        adder.add(key, item)
    return Span(started, time.time(), count)


def producer_process(
    spec: AdderSpec, start_seq: int, count: int, keys: int, size: int, warmup: int, barrier: Any, results: Any
) -> None:
    """Body of a spawned producer: build the adder, wait at the barrier, add, report."""
    adder = make_adder(spec)
    try:
        span = produce_with(adder, start_seq, count, keys, size, warmup=warmup, barrier=barrier)
    finally:
        adder.close()
    results.put(span)
