"""Failovers for the chaos harness: SIGKILL a master, let Redis promote a replica, rejoin.

Two topologies, each a set of real redis-servers on loopback ports (tests/servers.py):

- ``cluster``: a Redis Cluster of 3 masters with a replica each; the cluster's own election
  promotes the killed master's replica.
- ``sentinel``: a master with 2 replicas and 3 Sentinels, which promote one replica.

One failover, driven by ``FailoverDriver.poll`` from the harness's loop without blocking it:

1. ``kill``: SIGKILL a master (on a cluster, one chosen at random; the chaos keys whose
   partition it served are the keys the failover can touch);
2. ``promoted``: a replica serves the dead master's slots (cluster: every node says ok) or
   the Sentinels name a new master that answers as one;
3. ``rejoined``: the killed server is started again on its port as a replica (a cluster
   node from its nodes.conf: the cluster makes it a replica of its promoted one, and a
   restarted master waits before it takes writes, so it cannot serve its old slots empty;
   a Sentinel master with ``--replicaof`` the new master), and its link is up.

Each finished failover is one line of ``failovers.jsonl`` in the run's directory, which the
checker reads to attribute lost items to a failover.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from random import Random
from typing import Any, Protocol

import orjson
import redis

from tests.servers import RedisClusterGroup, RedisServer, SentinelGroup, log_to

TOPOLOGIES = ("cluster", "sentinel")
PROMOTE_TIMEOUT = 30.0
REJOIN_TIMEOUT = 30.0
START_TIMEOUT = 60.0


def probe(port: int) -> redis.Redis:
    """A client for a quick look at one server: every wait short."""
    return redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)


def link_up(server: RedisServer) -> bool:
    """Whether ``server`` runs as a replica whose link to its master is up."""
    if not server.running:
        return False
    client = probe(server.port)
    try:
        info = client.info("replication")
    except redis.RedisError:
        return False
    finally:
        client.close()
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


# A Sentinel that leads a failover logs the moment it tells a replica to become the master:
# "<pid>:X 25 Nov 2026 11:27:35.194 * +failover-state-send-slaveof-noone slave 127.0.0.1:P
# 127.0.0.1 P @ mymaster 127.0.0.1 OLD" (the time is the machine's local time, to the ms).
_PROMOTING = re.compile(
    rb"^\d+:X (\d+ \w+ \d+ [\d:.]+) . \+failover-state-send-slaveof-noone "
    rb"slave \S+ \S+ (\d+) @ \S+ \S+ (\d+)",
    re.MULTILINE,
)
SAME_FAILOVER = 30.0  # a promotion this soon after the harness killed its old master is that kill's


def sentinel_promotions(logs: list[Path]) -> list[tuple[float, int, int]]:
    """Every promotion the Sentinels' logs tell of: (time.time() of it, old master, new master)."""
    found = set()
    for log in logs:
        if not log.exists():
            continue
        for when, new, old in _PROMOTING.findall(log.read_bytes()):
            at = datetime.strptime(when.decode(), "%d %b %Y %H:%M:%S.%f").timestamp()
            found.add((round(at, 3), int(old), int(new)))
    return sorted(found)


REPLICATION_FIELDS = (
    "role", "master_port", "master_link_status", "master_link_down_since_seconds",
    "master_sync_in_progress", "slave_repl_offset", "master_repl_offset", "master_replid",
    "master_replid2", "second_repl_offset", "connected_slaves",
)  # fmt: skip


def replication(servers: list[RedisServer]) -> dict[str, dict[str, Any]]:
    """What ``INFO replication`` of each server says now (by port; dead ones say so): the
    offsets show how far each replica was behind its master when a failover began."""
    seen: dict[str, dict[str, Any]] = {}
    for server in servers:
        if not server.running:
            seen[str(server.port)] = {"running": False}
            continue
        client = probe(server.port)
        try:
            info = client.info("replication")
        except redis.RedisError as exc:
            seen[str(server.port)] = {"error": str(exc)}
            continue
        finally:
            client.close()
        seen[str(server.port)] = {name: info[name] for name in REPLICATION_FIELDS if name in info}
    return seen


class Topology(Protocol):
    """What the driver needs of a set of servers that can fail over."""

    def url(self) -> str: ...
    def master_ports(self) -> list[int]: ...
    def kill(self, port: int) -> list[tuple[int, int]] | None: ...
    def promoted(self, killed: int) -> int | None: ...
    def rejoin(self, killed: int, master: int) -> None: ...
    def rejoined(self, killed: int) -> bool: ...
    def observe(self) -> dict[str, Any]: ...
    def stop(self) -> None: ...


class ClusterTopology:
    """3 masters with a replica each; a master's slots move to its replica."""

    def __init__(self, directory: Path, node_timeout_ms: int) -> None:
        self.group = RedisClusterGroup(directory, masters=3, replicas=1, node_timeout_ms=node_timeout_ms)
        self._slots: dict[int, list[tuple[int, int]]] = {}

    def start(self) -> ClusterTopology:
        self.group.start(START_TIMEOUT)
        return self

    def url(self) -> str:
        return self.group.url()

    def master_ports(self) -> list[int]:
        return sorted(self.group.masters_now())

    def kill(self, port: int) -> list[tuple[int, int]] | None:
        """SIGKILL the master on ``port``; the slot ranges it served."""
        self._slots[port] = self.group.masters_now()[port]
        self.group.server(port).stop()
        return self._slots[port]

    def promoted(self, killed: int) -> int | None:
        """The master now serving the killed one's slots, once every running node says ok."""
        try:
            masters = self.group.masters_now()
        except RuntimeError:
            return None
        if killed in masters or not self.group._ready():
            return None
        first = self._slots[killed][0][0]
        return next((p for p, ranges in masters.items() if any(a <= first <= b for a, b in ranges)), None)

    def rejoin(self, killed: int, master: int) -> None:
        self.group.server(killed).start()  # from its nodes.conf: the cluster makes it a replica

    def rejoined(self, killed: int) -> bool:
        return link_up(self.group.server(killed)) and self.group._ready()

    def observe(self) -> dict[str, Any]:
        return {"replication": replication(self.group.servers or [])}

    def stop(self) -> None:
        self.group.stop()


class SentinelTopology:
    """A master with 2 replicas and 3 Sentinels."""

    def __init__(self, directory: Path, down_after_ms: int) -> None:
        self.group = SentinelGroup(directory, down_after_ms=down_after_ms)

    def start(self) -> SentinelTopology:
        self.group.start(START_TIMEOUT)
        return self

    def url(self) -> str:
        return self.group.url()

    def master_ports(self) -> list[int]:
        return [self.group.master_port()]

    def kill(self, port: int) -> list[tuple[int, int]] | None:
        self.group.server(port).stop()
        return None  # every key

    def promoted(self, killed: int) -> int | None:
        try:
            port = self.group.master_port()
        except RuntimeError:
            return None
        if port == killed:
            return None
        client = probe(port)
        try:
            role = client.info("replication").get("role")
        except redis.RedisError:
            return None
        finally:
            client.close()
        return port if role == "master" else None

    def rejoin(self, killed: int, master: int) -> None:
        assert self.group.servers is not None
        old = self.group.server(killed)
        replica = RedisServer(
            killed, old.directory, (*log_to(old.directory), "--replicaof", "127.0.0.1", str(master))
        )
        self.group.servers[self.group.servers.index(old)] = replica.start()

    def rejoined(self, killed: int) -> bool:
        return link_up(self.group.server(killed))

    def promotions(self) -> list[tuple[float, int, int]]:
        """Every promotion the Sentinels made, the harness's kills' and any other."""
        folders = [self.group.directory / f"sentinel{n}" for n in range(self.group.sentinels)]
        return sentinel_promotions([folder / "sentinel.log" for folder in folders])

    def observe(self) -> dict[str, Any]:
        """Each server's replication, and the master each Sentinel names (they may differ)."""
        named: dict[str, Any] = {}
        for port in self.group.sentinel_ports or []:
            client = probe(port)
            try:
                address = client.sentinel_get_master_addr_by_name(self.group.service)
                named[str(port)] = int(address[1]) if address else None
            except redis.RedisError as exc:
                named[str(port)] = str(exc)
            finally:
                client.close()
        return {"replication": replication(self.group.servers or []), "sentinels_name": named}

    def stop(self) -> None:
        self.group.stop()


def start_topology(kind: str, directory: Path, node_timeout_ms: int) -> ClusterTopology | SentinelTopology:
    if kind == "cluster":
        return ClusterTopology(directory, node_timeout_ms).start()
    if kind == "sentinel":
        return SentinelTopology(directory, node_timeout_ms).start()
    raise ValueError(f"unknown topology {kind!r}; choose from {TOPOLOGIES}")


@dataclass
class FailoverRecord:
    """One failover as the harness saw it; times are ``time.time()``."""

    n: int
    killed_port: int
    killed_at: float
    keys: list[str]  # the chaos keys whose partition the killed master served
    promoted_port: int | None = None
    promoted_at: float | None = None
    rejoined_at: float | None = None
    promote_seconds: float | None = None
    timed_out: str = ""  # "promote" or "rejoin" when that step did not finish in time
    unplanned: bool = False  # a Sentinel failed over a live master: no kill, killed_at = promotion
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # os.getloadavg() at the kill
    at_kill: dict[str, Any] = field(default_factory=dict)  # Topology.observe() just before it
    at_promote: dict[str, Any] = field(default_factory=dict)  # and once a master was promoted
    _deadline: float = field(default=0.0, repr=False)


class FailoverDriver:
    """Kill masters one at a time and follow each failover to its end, step by step.

    ``keys_in`` maps the killed master's slot ranges (None: all of them) to the chaos keys
    they hold, so that the checker judges loss only where a failover could cause it.
    """

    def __init__(
        self,
        topology: Topology,
        record: Path,
        keys_in: Callable[[list[tuple[int, int]] | None], list[str]],
        rng: Random,
    ) -> None:
        self.topology = topology
        self.record = record
        self.keys_in = keys_in
        self.rng = rng
        self.done: list[FailoverRecord] = []
        self.current: FailoverRecord | None = None

    @property
    def busy(self) -> bool:
        return self.current is not None

    def begin(self) -> None:
        """SIGKILL a master (not while a failover is under way)."""
        if self.current is not None:
            return
        port = self.rng.choice(self.topology.master_ports())
        seen, load = self.topology.observe(), os.getloadavg()
        slots = self.topology.kill(port)
        self.current = FailoverRecord(len(self.done) + 1, port, time.time(), self.keys_in(slots), load=load)
        self.current.at_kill = seen
        self.current._deadline = time.monotonic() + PROMOTE_TIMEOUT

    def poll(self) -> None:
        """Move the failover under way on by a step, if its servers allow it."""
        current = self.current
        if current is None:
            return
        if current.promoted_at is None:
            master = self.topology.promoted(current.killed_port)
            if master is None:
                if time.monotonic() > current._deadline:
                    self._end("promote")
                return
            current.promoted_port, current.promoted_at = master, time.time()
            current.promote_seconds = round(current.promoted_at - current.killed_at, 3)
            current.at_promote = self.topology.observe()
            self.topology.rejoin(current.killed_port, master)
            current._deadline = time.monotonic() + REJOIN_TIMEOUT
        elif self.topology.rejoined(current.killed_port):
            current.rejoined_at = time.time()
            self._end("")
        elif time.monotonic() > current._deadline:
            self._end("rejoin")

    def finish(self, timeout: float, tick: float = 0.05) -> None:
        """Poll until the failover under way has ended (bounded by its own deadlines)."""
        deadline = time.monotonic() + timeout
        while self.current is not None and time.monotonic() < deadline:
            self.poll()
            time.sleep(tick)  # polling the servers' state: Redis offers nothing to wait on
        if self.current is not None:
            self._end("finish")

    def _end(self, timed_out: str) -> None:
        assert self.current is not None
        self.current.timed_out = timed_out
        record = {k: v for k, v in asdict(self.current).items() if not k.startswith("_")}
        with self.record.open("ab") as file:
            file.write(orjson.dumps(record) + b"\n")
        self.done.append(self.current)
        self.current = None

    def record_unplanned(self) -> None:
        """Add to the records the failovers no kill of the harness caused: a Sentinel that
        found a live master slow to answer and promoted a replica. The old master stays a
        master, taking writes from clients still connected to it, until the clients leave
        it (redbatch asks the Sentinels each second) or Sentinel makes it a replica; what it
        took meanwhile is dropped when it resyncs. Its "kill" is the promotion's moment."""
        promotions = getattr(self.topology, "promotions", None)
        if promotions is None:
            return
        kills = sorted((f.killed_at, f.killed_port) for f in self.done)
        unpaired = list(promotions())
        for killed_at, port in kills:  # each kill's promotion: the first of its master after it
            mine = next(
                (p for p in unpaired if p[1] == port and 0 <= p[0] - killed_at <= SAME_FAILOVER), None
            )
            if mine is not None:
                unpaired.remove(mine)
        for at, old, new in unpaired:
            record = FailoverRecord(len(self.done) + 1, old, at, self.keys_in(None), new, at, unplanned=True)
            self.current = record
            self._end("")

    def summary(self) -> dict[str, Any]:
        promote = [f.promote_seconds for f in self.done if f.promote_seconds is not None]
        return {
            "failovers": len(self.done),
            "unplanned_failovers": sum(f.unplanned for f in self.done),
            "failover_timeouts": [f"{f.n}: {f.timed_out}" for f in self.done if f.timed_out],
            "promote_seconds_max": max(promote, default=None),
            "promote_seconds": [f.promote_seconds for f in self.done],
        }
