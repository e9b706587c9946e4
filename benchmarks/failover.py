"""``python -m benchmarks.failover [--failovers 20] [--replicas 0 1]``: acknowledged items
lost per Sentinel failover, with and without ``replicas=N``, and what ``replicas=N`` costs
an ``add``.

For each mode, on a fresh Sentinel group (a master, two replicas, three Sentinels: the
tests' ``SentinelGroup``, real redis-servers on loopback ports, no persistence): a producer
thread adds items steadily, recording every add that returned; the master is SIGKILLed
mid-load; the Sentinels promote a replica (bounded wait); the old master comes back as a
replica of the new one (empty, as after losing its disk) and the group is whole again; and
so on. Then a worker drains everything, and every item whose add returned but which no
handler saw counts as lost in the failover that followed its add.

The ``add`` cost is measured first, on the same group before any failover: sequential adds
on one connection with replicas=0 and replicas=N alternately, in rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from tests.servers import RedisServer, SentinelGroup

import redbatch
from redbatch import Batch, Batcher, Worker

PROMOTION = 30.0
"""Seconds a failover may take (Sentinels agree the master is down, promote, reconfigure)."""
RESYNC = 30.0
"""Seconds the restarted old master may take to become an online replica again."""
DRAIN = 120.0
"""Seconds the final drain may take."""
CONNECT_TIMEOUT, SOCKET_TIMEOUT = 0.5, 2.0
KEYS = 50


@dataclass
class Outcome:
    """One mode's run: acknowledged adds, and those lost, per failover."""

    replicas: int
    acked_per_failover: list[int] = field(default_factory=list)
    lost_per_failover: list[int] = field(default_factory=list)
    refused: int = 0
    """Adds that raised (StoreUnavailable, NotReplicated): not acknowledged, not counted."""
    promotion_s: list[float] = field(default_factory=list)
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)
    extra_switches: list[int] = field(default_factory=list)
    """Per failover, the masters the Sentinels switched to beyond the one the kill called for:
    a failover of a live master (it missed its pings for down-after-milliseconds)."""

    def lost_in_clean(self) -> int:
        """Lost in failovers with no failover of a live master in or right before them."""
        return sum(lost for n, lost in enumerate(self.lost_per_failover) if not self.spurious_near(n))

    def spurious_near(self, n: int) -> bool:
        return any(self.extra_switches[max(0, n - 1) : n + 2])


class Producer(threading.Thread):
    """Adds items 0, 1, 2, ... as fast as one connection allows; records each add that
    returned with the number of failovers begun before it returned."""

    def __init__(self, batcher: Batcher) -> None:
        super().__init__(daemon=True)
        self.batcher = batcher
        self.kills = 0  # set by the driver just before each SIGKILL
        self.next_n = 0
        self.kill_marks: list[int] = []
        """The next item number at each kill."""
        self.acked: dict[int, int] = {}
        self.refused = 0
        self.halt = threading.Event()
        self.progress = threading.Condition()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # reported by acked_since: the run must not hang on it
            self.error = exc
            with self.progress:
                self.progress.notify_all()

    def _produce(self) -> None:
        n = 0
        while not self.halt.is_set():
            kills = self.kills
            try:
                self.batcher.add(f"k{n % KEYS}", n)
            except redbatch.StoreUnavailable:
                self.refused += 1
                self.halt.wait(0.02)  # a failover under way: try the next item shortly
            else:
                # an add that began before a kill and returned after it is at risk in that kill
                self.acked[n] = kills
                with self.progress:
                    self.progress.notify_all()
            n += 1
            self.next_n = n

    def acked_since(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` more adds have returned; False on timeout."""
        target = len(self.acked) + count
        with self.progress:
            self.progress.wait_for(lambda: len(self.acked) >= target or self.error is not None, timeout)
        if self.error is not None:
            raise RuntimeError("the producer failed") from self.error
        return len(self.acked) >= target


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def online_replicas(port: int) -> int:
    with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
        info = client.info("replication")
    if info.get("role") != "master":
        return -1
    return sum(1 for k, v in info.items() if k.startswith("slave") and v.get("state") == "online")


def failover(group: SentinelGroup, producer: Producer, outcome: Outcome) -> None:
    """SIGKILL the master under load, wait for the promotion, bring the old master back as a
    replica of the new one, and wait until the group is whole again."""
    old = group.master_port()
    with redis.Redis(port=old, socket_timeout=1) as client:
        info = client.info("replication")
    before = {v["port"]: v["offset"] for k, v in info.items() if k.startswith("slave")}
    before["master"] = info["master_repl_offset"]
    producer.kill_marks.append(producer.next_n)
    producer.kills += 1
    group.server(old).stop()  # SIGKILL
    killed = time.monotonic()
    wait_for(lambda: group.master_port() != old and online_replicas(group.master_port()) >= 0,
             PROMOTION, "the Sentinels to promote a replica")  # fmt: skip
    outcome.promotion_s.append(time.monotonic() - killed)
    new = group.master_port()
    outcome.notes.append(f"offsets just before the kill {before}; promoted {new}")
    server = group.server(old)
    assert group.servers is not None
    extra = ("--replicaof", "127.0.0.1", str(new), "--repl-diskless-sync-delay", "0")
    extra += ("--logfile", str(server.directory / f"redis-{len(outcome.promotion_s)}.log"))
    group.servers[group.servers.index(server)] = RedisServer(old, server.directory, extra).start()
    wait_for(lambda: online_replicas(group.master_port()) >= group.replicas, RESYNC, "two online replicas")
    wait_for(group._ready, RESYNC, "the Sentinels to see the group whole")


def whole(group: SentinelGroup) -> SentinelGroup:
    """Wait until both replicas are online; a full resync starts at once from now on (Redis
    waits 5 s by default before a diskless one, in case more replicas come)."""
    assert group.servers is not None
    for server in group.servers:
        with redis.Redis(port=server.port, socket_timeout=2) as client:
            client.config_set("repl-diskless-sync-delay", 0)
    wait_for(lambda: online_replicas(group.master_port()) >= group.replicas, RESYNC, "two online replicas")
    return group


class SentinelEvents(threading.Thread):
    """Every event the Sentinels publish (+sdown, +promoted-slave, +convert-to-slave, ...),
    with the failover it happened in: what explains a loss."""

    def __init__(self, group: SentinelGroup, producer: Producer) -> None:
        super().__init__(daemon=True)
        assert group.sentinel_ports is not None
        self.clients = [redis.Redis(port=p, socket_timeout=None) for p in group.sentinel_ports]
        self.pubsubs = [c.pubsub() for c in self.clients]
        for pubsub in self.pubsubs:
            pubsub.psubscribe("*")
        self.producer = producer
        self.events: list[tuple[int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for n, pubsub in enumerate(self.pubsubs):
                try:
                    message = pubsub.get_message(timeout=0.01)
                except redis.RedisError:
                    continue
                if message and message["type"] == "pmessage":
                    channel, data = message["channel"].decode(), message["data"].decode()
                    self.events.append((self.producer.kills, f"s{n} {channel} {data}"))

    def switches(self, kills: int) -> int:
        """Replicas promoted (the leading Sentinel's +promoted-slave, once per failover)
        while ``kills`` kills had been made."""
        return sum(1 for k, event in self.events if k == kills and event.split()[1] == "+promoted-slave")

    def close(self) -> None:
        self.halt.set()
        self.join(5)
        for pubsub, client in zip(self.pubsubs, self.clients, strict=True):
            pubsub.close()
            client.close()


def run_mode(
    replicas: int, failovers: int, load_s: float, workdir: Path, log: bool, down_after_ms: int = 1000
) -> Outcome:
    outcome = Outcome(replicas)
    group = whole(SentinelGroup(workdir / f"replicas{replicas}", down_after_ms=down_after_ms).start())
    try:
        store = open_store(group, replicas, f"fo{uuid.uuid4().hex[:6]}")
        batcher = Batcher(store, "failover", max_items=500, max_wait=0.05, lease=5.0, backoff=0.05)
        producer = Producer(batcher)
        events = SentinelEvents(group, producer)
        events.start()
        producer.start()
        try:
            for n in range(failovers):
                if not producer.acked_since(200, PROMOTION):
                    raise RuntimeError("the producer made no progress")
                time.sleep(load_s)  # load before the kill; not a synchronisation
                failover(group, producer, outcome)
                if log:
                    print(f"  replicas={replicas} failover {n + 1}/{failovers}:"
                          f" promoted in {outcome.promotion_s[-1]:.1f}s", flush=True)  # fmt: skip
            producer.acked_since(200, PROMOTION)
        finally:
            producer.halt.set()
            producer.join(PROMOTION)
        delivered = drain(store, batcher, len(producer.acked))
        store.close()
        events.close()
    finally:
        group.stop()
    outcome.refused = producer.refused
    outcome.duplicates = sum(c - 1 for c in delivered.values() if c > 1)
    at_risk = Counter(producer.acked.values())
    lost = Counter(kills for n, kills in producer.acked.items() if n not in delivered)
    for k in sorted(lost):
        gone = sorted(n for n, kills in producer.acked.items() if kills == k and n not in delivered)
        print(f"    lost after kill {k}: items {gone[0]}..{gone[-1]} ({len(gone)}; acked after that kill:"
              f" {at_risk[k]}); kills at items {producer.kill_marks}", flush=True)  # fmt: skip
        for note in outcome.notes[max(0, k - 1) : k + 2]:
            print(f"      {note}")
        for kills, event in events.events:
            if k - 1 <= kills <= k + 1 and not event.split()[1].startswith(("__sentinel__", "+sentinel")):
                print(f"      after kill {kills}: {event}")
    # kills=k at ack time: at risk in failover k+1; the last bucket saw no failover after it
    outcome.acked_per_failover = [at_risk[k] for k in range(failovers)]
    # bucket k's adds are at risk from kill k+1 and any failover of a live master after kill k
    outcome.extra_switches = [events.switches(k) - (1 if k else 0) for k in range(failovers + 1)]
    outcome.lost_per_failover = [lost[k] for k in range(failovers)]
    if lost[failovers]:
        raise RuntimeError(f"{lost[failovers]} items added after the last failover were lost")
    return outcome


def drain(store: redbatch.Store, batcher: Batcher, expected: int) -> Counter[int]:
    """Run a worker until nothing is buffered or in flight; the items it saw, with counts."""
    delivered: Counter[int] = Counter()
    lock = threading.Lock()

    @batcher.handler
    def collect(batch: Batch) -> None:
        with lock:
            delivered.update(batch.items)

    worker = Worker(store, [batcher], handle_signals=False, concurrency=8)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + DRAIN
        while True:
            stats = batcher.stats()
            # the counters and the lists themselves: an item left in a list is stranded, not lost
            pending = sum(len(batcher.peek(f"k{i}", 1)) for i in range(KEYS))
            if stats.buffered_items == 0 and stats.in_flight == 0 and not pending and delivered:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the drain did not finish: {stats}, {pending} keys still hold items")
            time.sleep(0.1)
        if stats.dead:
            raise RuntimeError(f"{stats.dead} batches were dead-lettered during the drain")
    finally:
        worker.stop()
        thread.join(DRAIN)
    return delivered


def open_store(group: SentinelGroup, replicas: int, prefix: str) -> redbatch.Store:
    query = f"?replicas={replicas}" if replicas else ""
    return redbatch.connect(
        group.url() + query, prefix=prefix, connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT
    )


@dataclass
class Cost:
    replicas: int
    adds_per_s: float
    p50_ms: float
    p99_ms: float


def add_cost(modes: Sequence[int], adds: int, rounds: int, workdir: Path) -> list[Cost]:
    """Sequential adds on one group, each of ``modes`` in turn, ``rounds`` times."""
    group = whole(SentinelGroup(workdir / "cost").start())
    latencies: dict[int, list[float]] = {mode: [] for mode in modes}
    elapsed: dict[int, float] = dict.fromkeys(modes, 0.0)
    try:
        stores = {mode: open_store(group, mode, f"cost{mode}") for mode in latencies}
        batchers = {mode: Batcher(store, "cost", max_wait=3600) for mode, store in stores.items()}
        for _ in range(rounds):
            for mode, batcher in batchers.items():
                batcher.add("warm", 0)
                started = time.perf_counter()
                for n in range(adds):
                    t0 = time.perf_counter()
                    batcher.add(f"k{n % KEYS}", n)
                    latencies[mode].append(time.perf_counter() - t0)
                elapsed[mode] += time.perf_counter() - started
        for store in stores.values():
            store.close()
    finally:
        group.stop()
    return [
        Cost(
            mode,
            len(lat) / elapsed[mode],
            statistics.median(lat) * 1000,
            statistics.quantiles(lat, n=100)[98] * 1000,
        )
        for mode, lat in latencies.items()
    ]


def print_costs(costs: list[Cost]) -> None:
    print("\n| add, one connection, sequential | adds/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for c in costs:
        print(
            f"| replicas={c.replicas} | {c.adds_per_s:,.0f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} |", flush=True
        )


def print_outcome(o: Outcome) -> None:
    lost = o.lost_per_failover
    print(f"| replicas={o.replicas} | {len(lost)} | {sum(o.acked_per_failover)} | {sum(lost)}"
          f" | {statistics.mean(lost):.1f}, {max(lost)} | {sum(1 for x in lost if x)}"
          f" | {o.refused} | {o.duplicates} | {statistics.median(o.promotion_s):.1f}"
          f" | {sum(o.extra_switches)} | {o.lost_in_clean()} |")  # fmt: skip
    print(f"  lost per failover: {lost}; failovers of a live master after each kill: {o.extra_switches}",
          flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__)
    parser.add_argument("--failovers", type=int, default=20, help="failovers per mode (default 20)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[0, 1], help="modes (default 0 1)")
    parser.add_argument("--load", type=float, default=1.0, help="seconds of load before each kill")
    parser.add_argument("--cost-adds", type=int, default=2000, help="adds per mode per cost round")
    parser.add_argument("--cost-rounds", type=int, default=3)
    parser.add_argument(
        "--down-after", type=int, default=1000, help="Sentinels' down-after-milliseconds (default 1000)"
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (servers' files, logs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="redbatch-failover-") as tmp:
        workdir = args.keep or Path(tmp)
        print(f"load average at start: {os.getloadavg()}", flush=True)
        costs = add_cost(args.replicas, args.cost_adds, args.cost_rounds, workdir) if args.cost_adds else []
        print_costs(costs)
        print(f"load average after the add cost: {os.getloadavg()}", flush=True)
        outcomes = []
        for n in args.replicas:
            outcomes.append(run_mode(n, args.failovers, args.load, workdir, True, args.down_after))
            print_outcome(outcomes[-1])  # each mode as it ends: a later one may fail
            print(f"load average: {os.getloadavg()}", flush=True)
    print("\n| mode | failovers | acked adds at risk | lost (total) | lost per failover (mean, max)"
          " | failovers losing any | refused adds | duplicates | promotion s (median)"
          " | failovers of a live master | lost outside those |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        print_outcome(o)
    print_costs(costs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
