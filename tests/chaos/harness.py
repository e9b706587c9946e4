"""The chaos harness: producers, workers and a redis-server under injected faults, then a check.

A run, all of it bounded in time:

1. start a redis-server (append-only file, ``appendfsync always`` or ``everysec``) on a free
   loopback port, a TCP proxy in front of it when the network is to be cut, and a reaper
   that kills every child should this process die without cleaning up;
2. start worker processes (``worker_main``) and producer processes (``producer_main``);
3. for ``seconds``, inject the chosen faults: ``kill`` (SIGKILL a worker, start a
   replacement), ``stop`` (SIGSTOP a worker for longer than the lease, then SIGCONT),
   ``redis`` (SIGKILL redis-server, restart it on its port from its append-only file),
   ``net`` (the proxy drops every connection and refuses new ones, then restores),
   ``handler`` (handlers raise at random, hang past their timeout on rare items, and
   always raise on poison items), ``failover`` (with ``topology`` ``cluster`` or ``sentinel``:
   SIGKILL a master, let a replica be promoted, rejoin the old one as a replica; see
   failover.py);
4. heal every fault, let the producers finish, wait until the store is drained, stop the
   workers with SIGTERM;
5. check the records against the dead letters (``checker.check``) and print a summary.

Run from the repository root: ``.venv/bin/python -m tests.chaos.harness --seconds 600 --all``,
or against a cluster or Sentinel:
``.venv/bin/python -m tests.chaos.harness --topology cluster --faults failover,kill``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.crc import key_slot

import redbatch
from redbatch.stores.redis import RedisStore

from .checker import check, format_summary, violations
from .failover import TOPOLOGIES, FailoverDriver, start_topology
from .proxy import TcpProxy
from .reaper import Reaper
from .redis_proc import ChaosRedis

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ("kill", "stop", "redis", "net", "handler", "failover")
SINGLE_ONLY = frozenset({"redis", "net"})  # faults of the one redis-server the harness runs
BATCHER_NAME = "chaos"
TICK = 0.25  # longest the injector waits before looking at its workers again
FAILOVER_TICK = 0.05  # how often a failover under way is looked at (its promotion is timed)
READY_TIMEOUT = 30.0
PAUSE_TRIES = 40  # look for a busy worker to pause for up to 2 s
PAUSE_RETRY_SECONDS = 0.05
STOP_TIMEOUT = 20.0


@dataclass
class ChaosConfig:
    """What to run and which faults to inject; every duration is in seconds."""

    seconds: float = 20.0
    faults: frozenset[str] = frozenset()
    appendfsync: str = "always"
    workers: int = 3
    producers: int = 2
    keys: int = 40
    rate: float = 150.0  # items per second, per producer
    concurrency: int = 8
    max_items: int = 20
    max_wait: float = 0.3
    lease: float = 1.0
    max_attempts: int = 5
    backoff: float = 0.05
    timeout: float = 2.0
    fail_p: float = 0.05  # chance that a handler run raises ("handler")
    hang_p: float = 0.002  # share of items whose first run hangs past the timeout ("handler")
    poison_p: float = 0.001  # share of items whose runs always raise ("handler")
    hang_seconds: float = 3.0
    work_ms: tuple[float, float] = (5.0, 60.0)
    kill_every: float = 4.0
    stop_every: float = 6.0
    stop_seconds: float = 2.5  # longer than the lease, so the paused worker's batches lapse
    redis_every: float = 9.0
    redis_down: tuple[float, float] = (0.3, 2.0)
    net_every: float = 8.0
    net_down: tuple[float, float] = (1.5, 4.0)
    drain_seconds: float = 60.0
    retry_seconds: float = 10.0  # how long a producer keeps retrying one item
    topology: str = "single"  # or "cluster" (3 masters, a replica each) or "sentinel"
    failover_every: float = 10.0
    max_failovers: int | None = None
    down_after_ms: int = 1000  # cluster-node-timeout, or Sentinel's down-after-milliseconds
    store_options: dict[str, Any] = field(default_factory=dict)  # extra connect() options
    seed: int = 1
    fsync_records: bool = False  # records survive SIGKILL by write(); fsync is for machine crashes
    directory: Path | None = None

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
        if self.stop_seconds <= self.lease:
            raise ValueError("stop_seconds must exceed the lease, or nothing is reclaimed")
        if self.topology not in ("single", *TOPOLOGIES):
            raise ValueError(f"unknown topology {self.topology!r}; choose from single, {TOPOLOGIES}")
        if self.topology == "single" and "failover" in self.faults:
            raise ValueError("failover needs a topology with replicas: cluster or sentinel")
        if self.topology != "single" and self.faults & SINGLE_ONLY:
            raise ValueError(f"{sorted(self.faults & SINGLE_ONLY)} need topology single")

    def batcher_options(self) -> dict[str, Any]:
        return {
            "max_items": self.max_items,
            "max_wait": self.max_wait,
            "lease": self.lease,
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "timeout": self.timeout,
        }


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    paused: bool = False
    log: Path | None = None
    record: Path | None = None
    read_up_to: int = 0
    claimed: set[tuple[str, int]] = field(default_factory=set)

    def in_flight(self) -> int:
        """How many batches this worker has claimed and not yet settled, from its records."""
        if self.record is None or not self.record.exists():
            return 0
        with self.record.open("rb") as file:
            file.seek(self.read_up_to)
            chunk = file.read()
        complete = chunk.rfind(b"\n") + 1
        self.read_up_to += complete
        for line in chunk[:complete].splitlines():
            rec = orjson.loads(line)
            lease = (rec.get("bid", ""), rec.get("token", 0))
            if rec["kind"] == "claim":
                self.claimed.add(lease)
            elif rec["kind"] in ("ack", "fail"):
                self.claimed.discard(lease)
        return len(self.claimed)


@dataclass(order=True)
class _Action:
    at: float
    seq: int
    name: str = field(compare=False)
    run: Callable[[], None] = field(compare=False)


class ChaosRun:
    """One bounded run; ``run()`` returns the summary and leaves no process behind."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.directory = config.directory or Path(tempfile.mkdtemp(prefix="redbatch-chaos-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(config.seed)
        self.faults: Counter[str] = Counter()
        self.workers: dict[int, _Child] = {}
        self.producers: list[_Child] = []
        self.unexpected_exits: list[str] = []
        self._worker_index = itertools.count()
        self._actions: list[_Action] = []
        self._action_seq = itertools.count()
        self._wake = threading.Event()
        self.reaper: Reaper | None = None
        self.redis: ChaosRedis | None = None
        self.proxy: TcpProxy | None = None
        self.failover: FailoverDriver | None = None
        self.topology: Any = None  # failover.ClusterTopology or SentinelTopology
        self.client_url = ""
        self.store_url = ""  # the store itself, not through the proxy
        self._key_slots: dict[str, int] = {}
        self.deadline = 0.0

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        config = self.config
        started = time.monotonic()
        load_at_start = os.getloadavg()  # the machine is shared: a starved one lags replicas
        self.deadline = time.time() + config.seconds + config.drain_seconds + 120
        try:
            self.reaper = Reaper()
            self._start_store()
            if "net" in config.faults:
                assert self.redis is not None  # "net" needs topology single
                self.proxy = TcpProxy(self.redis.port).start()
                self.client_url = f"redis://127.0.0.1:{self.proxy.port}/0"
            ready = [self._start_worker() for _ in range(config.workers)]
            self._wait_for_files(ready)
            self.producers = [self._start_producer(p) for p in range(config.producers)]
            self._inject(time.monotonic() + config.seconds)
            self._heal()
            self._wait_producers()
            drained, stats = self._drain()
            self._stop_workers()
            if self.failover is not None:
                self.failover.record_unplanned()  # before the checker reads failovers.jsonl
            dead = self._dead_letters()
            leftovers = self._leftover_keys()
            summary = check(self.directory, dead)
        finally:
            self._cleanup()
        if self.failover is not None:
            summary |= self.failover.summary()
        summary |= {
            "seconds": config.seconds,
            "wall_seconds": round(time.monotonic() - started, 1),
            "load_at_start": [round(n, 2) for n in load_at_start],
            "load_at_end": [round(n, 2) for n in os.getloadavg()],
            "faults": sorted(config.faults),
            "topology": config.topology,
            "appendfsync": config.appendfsync,
            "injected": dict(self.faults),
            "workers_started": next(self._worker_index),
            "worker_unexpected_exits": len(self.unexpected_exits),
            "worker_exit_examples": self.unexpected_exits[:3],
            "drained": drained,
            "leftover_keys": leftovers,
            "final_stats": stats,
            "directory": str(self.directory),
        }
        return summary

    def _inject(self, until: float) -> None:
        """Inject the configured faults until ``until`` (monotonic), watching the workers."""
        kinds = {"kill": self.config.kill_every, "stop": self.config.stop_every}
        kinds |= {"redis": self.config.redis_every, "net": self.config.net_every}
        kinds |= {"failover": self.config.failover_every}
        every = {kind: period for kind, period in kinds.items() if kind in self.config.faults}
        now = time.monotonic()
        next_at = {kind: now + self.rng.uniform(0.3, 1.0) * period for kind, period in every.items()}
        inject = {"kill": self._kill_worker, "stop": self._pause_worker}
        inject |= {"redis": self._crash_redis, "net": self._cut_network, "failover": self._fail_over}
        while (now := time.monotonic()) < until:
            self._run_actions(now)
            self._watch_workers()
            if self.failover is not None:
                self.failover.poll()
            for kind, at in next_at.items():
                if now >= at:
                    inject[kind]()
                    next_at[kind] = now + self.rng.uniform(0.5, 1.5) * every[kind]
            tick = FAILOVER_TICK if self.failover is not None and self.failover.busy else TICK
            soonest = min([until, now + tick, *next_at.values(), *(a.at for a in self._actions[:1])])
            self._wake.wait(max(0.0, soonest - time.monotonic()))

    def _start_store(self) -> None:
        """One redis-server, or a cluster or Sentinel group whose masters can be failed over."""
        config = self.config
        assert self.reaper is not None
        if config.topology == "single":
            self.redis = ChaosRedis(self.directory / "redis", config.appendfsync, self.reaper.watch).start()
            self.client_url = self.store_url = self.redis.url
            return
        self.topology = start_topology(config.topology, self.directory / "redis", config.down_after_ms)
        self.client_url = self.store_url = self.topology.url()
        records = self.directory / "failovers.jsonl"
        self.failover = FailoverDriver(self.topology, records, self._keys_in, self.rng)
        self._keys_in(None)

    def _keys_in(self, slots: list[tuple[int, int]] | None) -> list[str]:
        """The chaos keys whose partition lies in ``slots`` (inclusive ranges; None: all)."""
        if not self._key_slots:  # found once, before any master is killed
            store = redbatch.connect(self.store_url, **self.config.store_options)
            try:
                assert isinstance(store, RedisStore)
                for key in (f"k{n}" for n in range(self.config.keys)):
                    self._key_slots[key] = key_slot(store._partition_of(BATCHER_NAME, key).base.encode())
            finally:
                store.close()
        if slots is None:
            return list(self._key_slots)
        return [k for k, slot in self._key_slots.items() if any(a <= slot <= b for a, b in slots)]

    # ------------------------------------------------------------------ processes

    def _child_config(self) -> dict[str, Any]:
        config = self.config
        handler_faults = "handler" in config.faults
        return {
            "url": self.client_url,
            "name": BATCHER_NAME,
            "batcher": config.batcher_options(),
            "store_options": {"connect_timeout": 2.0, "socket_timeout": 5.0} | config.store_options,
            "seed": config.seed,
        } | (
            {"fail_p": config.fail_p, "poison_p": config.poison_p, "hang_p": config.hang_p}
            if handler_faults
            else {"fail_p": 0.0, "poison_p": 0.0, "hang_p": 0.0}
        )

    def _spawn(self, name: str, module: str, args: list[str]) -> _Child:
        log = self.directory / f"{name}.log"
        with log.open("ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # the harness, not the terminal, decides when they stop
            )
        assert self.reaper is not None
        self.reaper.watch(process.pid)
        return _Child(name, process, log=log)

    def _start_worker(self) -> Path:
        index = next(self._worker_index)
        config = self._child_config() | {
            "concurrency": self.config.concurrency,
            "hang_seconds": self.config.hang_seconds,
            "work_ms": list(self.config.work_ms),
            "deadline": self.deadline,
            "fsync": self.config.fsync_records,
        }
        name = f"worker-{index}"
        ready = self.directory / f"{name}.ready"
        record = self.directory / f"{name}.jsonl"
        child = self._spawn(
            name, "tests.chaos.worker_main", [orjson.dumps(config).decode(), str(record), str(ready)]
        )
        child.record = record
        self.workers[index] = child
        return ready

    def _start_producer(self, p: int) -> _Child:
        config = self._child_config() | {
            "producer": p,
            "keys": self.config.keys,
            "rate": self.config.rate,
            "seconds": self.config.seconds,
            "max_tries": 50,
            "retry_seconds": self.config.retry_seconds,
        }
        record = self.directory / f"producer-{p}.jsonl"
        return self._spawn(
            f"producer-{p}", "tests.chaos.producer_main", [orjson.dumps(config).decode(), str(record)]
        )

    def _wait_for_files(self, paths: list[Path]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(p.exists() for p in paths):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {READY_TIMEOUT} s: see {self.directory}")
            self._watch_workers()
            self._wake.wait(0.02)

    def _watch_workers(self) -> None:
        """A worker that exited without being killed is a finding: record it, replace it."""
        for index, child in list(self.workers.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.workers[index]
            tail = child.log.read_text(errors="replace")[-1500:] if child.log else ""
            self.unexpected_exits.append(f"{child.name} exited with {code}: ...{tail}")
            self._start_worker()

    # ------------------------------------------------------------------ faults

    def _later(self, delay: float, name: str, run: Callable[[], None]) -> None:
        heapq.heappush(self._actions, _Action(time.monotonic() + delay, next(self._action_seq), name, run))

    def _run_actions(self, now: float) -> None:
        while self._actions and self._actions[0].at <= now:
            heapq.heappop(self._actions).run()

    def _kill_worker(self) -> None:
        candidates = [i for i, c in self.workers.items() if not c.paused]
        if not candidates:
            return
        index = self.rng.choice(candidates)
        child = self.workers.pop(index)
        child.process.send_signal(signal.SIGKILL)
        child.process.wait(10)
        self.faults["kill"] += 1
        self._start_worker()

    def _pause_worker(self, tries_left: int = PAUSE_TRIES) -> None:
        candidates = [c for c in self.workers.values() if not c.paused]
        if len(candidates) < 2:  # keep one worker running to reclaim the paused one's batches
            return
        # Pause a worker with batches in flight: their late acknowledgements must be refused.
        # Batches settle fast, so look again shortly (bounded) rather than pause an idle one.
        busy = [c for c in candidates if c.in_flight() > 0]
        if not busy and tries_left > 0:
            self._later(PAUSE_RETRY_SECONDS, "pause", lambda: self._pause_worker(tries_left - 1))
            return
        child = self.rng.choice(busy or candidates)
        self.faults["stop_with_batches_in_flight"] += bool(busy)
        child.process.send_signal(signal.SIGSTOP)
        child.paused = True
        self.faults["stop"] += 1

        def resume() -> None:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGCONT)
            child.paused = False

        self._later(self.config.stop_seconds, "resume", resume)

    def _crash_redis(self) -> None:
        assert self.redis is not None
        if not self.redis.running:
            return
        self.redis.kill()
        self.faults["redis"] += 1
        self._later(self.rng.uniform(*self.config.redis_down), "redis", self.redis.restart)

    def _fail_over(self) -> None:
        limit = self.config.max_failovers
        if self.failover is None or self.failover.busy:
            return
        if limit is not None and len(self.failover.done) >= limit:
            return
        self.failover.begin()
        self.faults["failover"] += 1

    def _cut_network(self) -> None:
        if self.proxy is None or self.proxy.is_cut:
            return
        self.faults["net_dropped_connections"] += self.proxy.cut()
        self.faults["net"] += 1
        self._later(self.rng.uniform(*self.config.net_down), "net", self.proxy.restore)

    def _heal(self) -> None:
        """End every fault in progress: restart Redis, restore the link, resume workers."""
        while self._actions:
            heapq.heappop(self._actions).run()
        if self.redis is not None and not self.redis.running:
            self.redis.restart()
        if self.failover is not None:
            self.failover.finish(timeout=90.0)
        self._watch_workers()

    # ------------------------------------------------------------------ ending

    def _wait_producers(self) -> None:
        deadline = time.monotonic() + self.config.retry_seconds + 30
        for child in self.producers:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(10)
                self.unexpected_exits.append(f"{child.name} did not stop by its deadline")

    def _direct_batcher(self) -> redbatch.Batcher:
        store = redbatch.connect(self.store_url, **self.config.store_options)
        return redbatch.Batcher(store, BATCHER_NAME, **self.config.batcher_options())

    def _drain(self) -> tuple[bool, dict[str, Any]]:
        """Wait, bounded, until nothing is buffered, running or waiting to retry."""
        batcher = self._direct_batcher()
        deadline = time.monotonic() + self.config.drain_seconds
        try:
            while True:
                self._watch_workers()
                stats = batcher.stats()
                idle = stats.open_keys == stats.buffered_items == stats.in_flight == stats.retrying == 0
                if idle or time.monotonic() > deadline:
                    return idle, asdict(stats)
                self._wake.wait(0.1)
        finally:
            batcher.store.close()

    def _stop_workers(self) -> None:
        for child in self.workers.values():
            child.process.send_signal(signal.SIGCONT)
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.workers.values():
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(10)
                self.unexpected_exits.append(f"{child.name} did not stop on SIGTERM")
        self.workers.clear()

    def _dead_letters(self) -> list[redbatch.DeadLetter]:
        batcher = self._direct_batcher()
        letters: list[redbatch.DeadLetter] = []
        try:
            for page in range(10_000):
                chunk = batcher.dead_letters(limit=500, offset=page * 500)
                letters += chunk
                if len(chunk) < 500:
                    break
        finally:
            batcher.store.close()
        return letters

    def _leftover_keys(self) -> int:
        """Per-key records (pending, dedupe, key state, current batch) still in Redis."""
        ports = [self.redis.port] if self.redis is not None else self.topology.master_ports()
        left = 0
        for port in ports:
            client = redis.Redis(port=port)
            try:
                names = client.scan_iter(match=f"{{redbatch:{BATCHER_NAME}:*}}:*", count=1000)
                kinds = (n.split(b"}:", 1)[1].split(b":", 1)[0] for n in names)
                left += sum(1 for kind in kinds if kind in (b"i", b"d", b"k", b"b"))
            finally:
                client.close()
        return left

    def _cleanup(self) -> None:
        for child in [*self.workers.values(), *self.producers]:
            if child.process.poll() is None:
                child.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(10)
        if self.proxy is not None:
            self.proxy.close()
        if self.redis is not None:
            self.redis.kill()
        if self.topology is not None:
            self.topology.stop()
        if self.reaper is not None:
            self.reaper.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through ChaosRun.run's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long faults are injected")
    parser.add_argument("--all", action="store_true", help="inject every kind of fault")
    parser.add_argument("--faults", default="", help=f"comma-separated, of {','.join(FAULTS)}")
    parser.add_argument("--appendfsync", default="always", choices=["always", "everysec"])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=150.0, help="items per second per producer")
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--topology", default="single", choices=["single", *TOPOLOGIES])
    parser.add_argument("--failover-every", type=float, default=10.0, help="seconds between failovers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where records go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    every = set(FAULTS) - ({"failover"} if args.topology == "single" else SINGLE_ONLY)
    faults = frozenset(every) if args.all else frozenset(f for f in args.faults.split(",") if f)
    config = ChaosConfig(
        seconds=args.seconds,
        faults=faults,
        appendfsync=args.appendfsync,
        workers=args.workers,
        producers=args.producers,
        rate=args.rate,
        keys=args.keys,
        topology=args.topology,
        failover_every=args.failover_every,
        seed=args.seed,
        directory=args.dir,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    summary = ChaosRun(config).run()
    print(format_summary(summary))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    broken = violations(summary)
    print("verdict:", "ok" if not broken else "; ".join(broken))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
