"""Read what producers and workers recorded, and check redbatch's guarantees against it.

The checker trusts only the records: an item is *acknowledged* when its producer recorded
that ``add`` returned; it is *delivered* by a handler run that returned (``result == "ok"``);
a run that raised ``ItemsFailed`` delivers the items it did not name. Checks:

- lost: acknowledged items neither delivered nor in dead letters (must be 0);
- duplicates: items delivered more than once (allowed: at least once);
- order: for each key and producer, an item delivered for the first time after a later
  item of the same producer and key was delivered (re-deliveries are not violations);
- overlaps: confirmed runs (the store accepted their ack or fail) of *different* batches of
  one key that overlap in time (must be 0; runs refused by the fencing token, or abandoned
  after a timeout, may overlap and are counted apart as ``stale_overlaps``);
- fencing: acknowledgements accepted from a stale token, or two accepted for one batch.

With failovers (``failovers.jsonl``, written by failover.py), Redis replication being
asynchronous, a promoted replica holds the old master's data as it was a moment before the
kill: writes the old master acknowledged after that moment are gone. What that can do, and
how it is counted:

- an item added just before the kill is lost: counted per failover (``lost_per_failover``)
  when its add returned at most ``FAILOVER_WINDOW`` seconds before the kill (plus
  ``REPLY_SLACK`` after: a reply sent before the kill may be read after it) and its key
  lived on the killed master; any other loss is ``lost_unattributed``, a violation;
- a claim, heartbeat or acknowledgement is undone: the batch runs again (a duplicate, as
  at least once allows), and its fencing tokens are handed out again, since the token
  counter went back too. An acknowledgement then accepted with a lower token than a claim
  the old master granted, or a batch acknowledged twice, is a failover's (and reported as
  ``failover_stale_acks``, ``failover_double_acks``) when that claim or the first
  acknowledgement came in the same window on the killed master's keys; otherwise it is a
  violation as before;
- overlaps are judged as before, and stay 0: the old master is dead before a replica is
  promoted, so a run confirmed by the old master ended before any run the new one granted
  began, and a run whose claim was undone cannot be confirmed by the new one (its ack is
  refused: batch ids are random, never handed out again). Order holds for the same reason:
  the new master's data is an earlier state of the old one's.

Sentinel also fails over masters nobody killed: one whose link to a master, just promoted
on a loaded machine, went unanswered for ``down-after-milliseconds`` starts a failover of
that live master. failover.py finds these in the Sentinels' logs and records them as
``unplanned`` failovers, their "kill" the moment the replica was promoted. The old master
stays a master (for 8-10 s, until Sentinel makes it a replica and it drops what it took),
so there are two masters until the clients leave it (``FOLLOW_WINDOW`` after the promotion):

- an add answered from ``FAILOVER_WINDOW`` before the promotion to ``FOLLOW_WINDOW`` after it
  may be lost, and is counted per failover as above; before redbatch's Sentinel client asked
  the Sentinels again each second (client.MASTER_RECHECK) it wrote to the old master until
  Sentinel converted it, and a 300 s run lost every add of 10 s;
- both masters grant leases, so two runs of one key may overlap: such a pair, the later run
  started in that window, is counted apart (``failover_overlaps``); fencing tokens likewise.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from redbatch import DeadLetter

ItemId = tuple[int, int]  # (producer, seq)
EXAMPLES = 5
# Exceptions a worker may log while the store is unreachable; any other is a finding.
EXPECTED_EXCEPTIONS = frozenset(
    {
        "redbatch.errors.StoreUnavailable",
        "redis.exceptions.ConnectionError",
        "redis.exceptions.TimeoutError",
        "redis.exceptions.BusyLoadingError",
        "ConnectionError",
        "ConnectionResetError",
        "ConnectionRefusedError",
        "BrokenPipeError",
        "TimeoutError",
    }
)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): ", re.MULTILINE)  # the last line of a traceback
ADD_BOUND = 15.0  # longest a producer's add may take, StoreUnavailable included
FAILOVER_WINDOW = 2.0  # seconds before a kill in which a write may not have been replicated
REPLY_SLACK = 0.5  # seconds after a kill in which a reply the old master sent may be read
# An unplanned failover (a Sentinel promoted a replica of a live master) leaves the old master
# a master: clients write there until the Sentinels they ask agree on the new one (a hello
# period, 2 s) and they ask again (redbatch.stores.redis.client.MASTER_RECHECK, 1 s).
FOLLOW_WINDOW = 2.0 + 1.0 + REPLY_SLACK


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one file; a torn last line (a SIGKILL mid-write) is skipped."""
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue


@dataclass(frozen=True, slots=True)
class Run:
    """One handler execution as its worker recorded it."""

    bid: str
    key: str
    attempt: int
    items: tuple[ItemId, ...]
    start: float
    end: float
    pid: int
    result: str
    failed: tuple[int, ...] = ()

    @property
    def delivered(self) -> tuple[ItemId, ...]:
        """The items this run handled successfully: all if it returned, the unnamed if partial."""
        if self.result == "ok":
            return self.items
        if self.result == "partial":
            return tuple(item for i, item in enumerate(self.items) if i not in self.failed)
        return ()


def item_ids(items: Iterable[Any]) -> tuple[ItemId, ...]:
    return tuple((int(i["p"]), int(i["seq"])) for i in items)


@dataclass
class Records:
    """Everything the processes of one run wrote."""

    acked: set[ItemId]
    acked_at: dict[ItemId, float]  # time.time() when add returned
    key_of: dict[ItemId, str]
    unacked: set[ItemId]
    poison: set[ItemId]
    produced: int
    add_errors: Counter[str]
    longest_add: float
    runs: list[Run]
    claims: list[dict[str, Any]]
    settles: list[dict[str, Any]]  # ack and fail answers
    logs: str

    @classmethod
    def load(cls, directory: Path) -> Records:
        acked: set[ItemId] = set()
        acked_at: dict[ItemId, float] = {}
        key_of: dict[ItemId, str] = {}
        unacked: set[ItemId] = set()
        poison: set[ItemId] = set()
        errors: Counter[str] = Counter()
        longest = 0.0
        for path in sorted(directory.glob("producer-*.jsonl")):
            p = int(path.stem.split("-")[1])
            for rec in read_jsonl(path):
                if rec.get("summary"):
                    continue
                item = (p, int(rec["seq"]))
                (acked if rec["ok"] else unacked).add(item)
                key_of[item] = rec["key"]
                if rec["ok"]:
                    acked_at[item] = float(rec["t"])
                if rec.get("f") == "poison":
                    poison.add(item)
                errors.update(e.split(":")[0] for e in rec["errors"])
                longest = max(longest, float(rec["longest"]))
        runs: list[Run] = []
        claims: list[dict[str, Any]] = []
        settles: list[dict[str, Any]] = []
        for path in sorted(directory.glob("worker-*.jsonl")):
            for rec in read_jsonl(path):
                kind = rec["kind"]
                if kind == "run":
                    runs.append(
                        Run(
                            rec["bid"],
                            rec["key"],
                            int(rec["attempt"]),
                            item_ids(rec["items"]),
                            float(rec["start"]),
                            float(rec["end"]),
                            int(rec["pid"]),
                            rec["result"],
                            tuple(rec.get("failed", ())),
                        )
                    )
                elif kind == "claim":
                    claims.append(rec)
                else:
                    settles.append(rec)
        logs = "\n".join(p.read_text(errors="replace") for p in sorted(directory.glob("worker-*.log")))
        return cls(
            acked,
            acked_at,
            key_of,
            unacked,
            poison,
            len(acked | unacked),
            errors,
            longest,
            runs,
            claims,
            settles,
            logs,
        )


def order_violations(runs: list[Run]) -> list[str]:
    """Items first delivered after a later item of the same producer and key.

    Batches are taken in the order their first delivering run started; within a batch,
    its runs in the order they started (a partial run delivers some items, a retry the rest).
    """
    delivering = sorted((r for r in runs if r.delivered), key=lambda r: r.start)
    first_start: dict[str, float] = {}
    for run in delivering:
        first_start.setdefault(run.bid, run.start)
    delivering.sort(key=lambda r: (first_start[r.bid], r.bid, r.start))
    seen: dict[tuple[str, int], set[int]] = defaultdict(set)
    highest: dict[tuple[str, int], int] = {}
    found: list[str] = []
    for run in delivering:
        for p, seq in run.delivered:
            stream = (run.key, p)
            if seq in seen[stream]:
                continue  # a re-delivery, not a reordering
            top = highest.get(stream, -1)
            if seq < top:
                found.append(f"{run.key} p{p}: seq {seq} first delivered after seq {top} (batch {run.bid})")
            seen[stream].add(seq)
            highest[stream] = max(top, seq)
    return found


def overlapping(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of different batches of one key whose [start, end] intervals overlap."""
    by_key: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    pairs: list[tuple[Run, Run]] = []
    for key_runs in by_key.values():
        key_runs.sort(key=lambda r: r.start)
        active: list[Run] = []
        for run in key_runs:
            active = [a for a in active if a.end > run.start]
            pairs += [(a, run) for a in active if a.bid != run.bid]
            active.append(run)
    return pairs


def describe(pair: tuple[Run, Run]) -> str:
    a, b = pair
    return (
        f"{a.key}: {a.bid}#{a.attempt} pid {a.pid} [{a.start:.3f}, {a.end:.3f}] ({a.result}) overlaps "
        f"{b.bid}#{b.attempt} pid {b.pid} [{b.start:.3f}, {b.end:.3f}] ({b.result})"
    )


@dataclass(frozen=True, slots=True)
class Failover:
    """One failover as the harness recorded it: when the master died, and its keys."""

    n: int
    killed_at: float  # of an unplanned failover: when the new master was promoted
    keys: frozenset[str]
    unplanned: bool = False

    def undid(self, key: str, t: float) -> bool:
        """Whether a write on ``key`` answered at ``t`` may have died with the old master."""
        after = FOLLOW_WINDOW if self.unplanned else REPLY_SLACK
        return key in self.keys and self.killed_at - FAILOVER_WINDOW <= t <= self.killed_at + after


def load_failovers(directory: Path) -> list[Failover]:
    path = directory / "failovers.jsonl"
    if not path.exists():
        return []
    return [
        Failover(r["n"], float(r["killed_at"]), frozenset(r["keys"]), bool(r.get("unplanned")))
        for r in read_jsonl(path)
    ]


def undone_by(failovers: list[Failover], key: str, t: float) -> Failover | None:
    """The first failover that may have undone a write on ``key`` answered at ``t``."""
    return next((f for f in failovers if f.undid(key, t)), None)


def fencing_violations(
    claims: list[dict[str, Any]], settles: list[dict[str, Any]], failovers: list[Failover]
) -> dict[str, int]:
    """Accepted acknowledgements that a newer claim should have fenced off, and double acks;
    those a failover explains (the newer claim, or the first ack, undone) counted apart."""
    newer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for claim in claims:
        newer[claim["bid"]].append(claim)
    accepted = sorted((s for s in settles if s["kind"] == "ack" and s["ok"]), key=lambda s: s["t"])
    stale = explained_stale = 0
    for ack in accepted:
        fencing = [c for c in newer[ack["bid"]] if int(c["token"]) > int(ack["token"])]
        if fencing:
            undone = all(undone_by(failovers, c["key"], c["t"]) for c in fencing)
            explained_stale += undone
            stale += not undone
    first: dict[str, dict[str, Any]] = {}
    double = explained_double = 0
    for ack in accepted:
        if ack["bid"] not in first:
            first[ack["bid"]] = ack
            continue
        earlier = first[ack["bid"]]
        undone = undone_by(failovers, earlier["key"], earlier["t"]) is not None
        explained_double += undone
        double += not undone
    return {
        "stale_acks_accepted": stale,
        "double_acks": double,
        "failover_stale_acks": explained_stale,
        "failover_double_acks": explained_double,
    }


def loss_by_failover(rec: Records, lost: list[ItemId], failovers: list[Failover]) -> dict[str, Any]:
    """Lost items each failover explains (added just before its kill, on its keys), and the rest."""
    per: Counter[int] = Counter()
    unexplained: list[ItemId] = []
    before_kill: list[float] = []
    for item in lost:
        failover = undone_by(failovers, rec.key_of[item], rec.acked_at[item])
        if failover is None:
            unexplained.append(item)
        else:
            per[failover.n] += 1
            before_kill.append(failover.killed_at - rec.acked_at[item])
    return {
        "lost_per_failover": [per[f.n] for f in failovers],
        "lost_unattributed": len(unexplained),
        "lost_unattributed_examples": unexplained[:EXAMPLES],
        "lost_added_before_kill_max_seconds": round(max(before_kill), 3) if before_kill else None,
    }


def latency_figures(rec: Records) -> dict[str, float | None]:
    """Seconds from ``add`` returning to the start of the item's first successful run."""
    first: dict[ItemId, float] = {}
    for run in rec.runs:
        if run.result == "ok":
            for item in run.items:
                if item not in first or run.start < first[item]:
                    first[item] = run.start
    waits = sorted(max(0.0, first[i] - t) for i, t in rec.acked_at.items() if i in first)
    if not waits:
        return {"latency_p50": None, "latency_p99": None, "latency_max": None}
    return {
        "latency_p50": round(waits[len(waits) // 2], 3),
        "latency_p99": round(waits[min(len(waits) - 1, len(waits) * 99 // 100)], 3),
        "latency_max": round(waits[-1], 3),
    }


def dead_letter_figures(dead: list[DeadLetter], runs: list[Run]) -> dict[str, Any]:
    """Dead letters by the last line of their error, and those whose handler never ran."""
    ran = {run.bid for run in runs}
    errors = Counter((d.error.strip().splitlines() or [""])[-1][:70] for d in dead)
    never_ran = [d for d in dead if d.id not in ran]
    return {
        "dead_errors": dict(errors),
        "dead_never_ran": len(never_ran),
        "dead_never_ran_examples": [f"{d.id} {d.key}: {d.error.strip()[-70:]}" for d in never_ran[:EXAMPLES]],
    }


def check(directory: Path, dead: list[DeadLetter]) -> dict[str, Any]:
    """Every figure of one run, from its records and the store's dead letters."""
    rec = Records.load(directory)
    failovers = load_failovers(directory)
    delivered: Counter[ItemId] = Counter()
    for run in rec.runs:
        delivered.update(run.delivered)
    dead_items = {item for letter in dead for item in item_ids(letter.items)}
    lost = sorted(rec.acked - delivered.keys() - dead_items)
    confirmed_ids = {(s["bid"], s["attempt"]) for s in rec.settles if s["kind"] == "ack" and s["ok"]}
    confirmed = [r for r in rec.runs if r.result == "ok" and (r.bid, r.attempt) in confirmed_ids]
    split_brain = [f for f in failovers if f.unplanned]
    overlaps, failover_overlaps = [], []
    for pair in overlapping(confirmed):  # two live masters each granted one of them
        later = max(pair, key=lambda r: r.start)
        (failover_overlaps if undone_by(split_brain, later.key, later.start) else overlaps).append(pair)
    stale = [
        pair
        for pair in overlapping(r for r in rec.runs if r.result in ("ok", "hung"))
        if not (
            (pair[0].bid, pair[0].attempt) in confirmed_ids
            and (pair[1].bid, pair[1].attempt) in confirmed_ids
        )
    ]
    order = order_violations(rec.runs)
    results = Counter(r.result for r in rec.runs)
    refused = [s for s in rec.settles if s["ok"] is False]
    return {
        "produced": rec.produced,
        "acknowledged": len(rec.acked),
        "not_acknowledged": len(rec.unacked),
        "add_errors": dict(rec.add_errors),
        "unexpected_add_errors": sum(n for e, n in rec.add_errors.items() if e != "StoreUnavailable"),
        "longest_add_seconds": round(rec.longest_add, 3),
        "delivered": len(delivered),
        "deliveries": sum(delivered.values()),
        "duplicates": sum(1 for n in delivered.values() if n > 1),
        "delivered_not_acknowledged": len(delivered.keys() & rec.unacked),
        "lost": len(lost),
        "lost_examples": lost[:EXAMPLES],
        **loss_by_failover(rec, lost, failovers),
        "dead_letter_batches": len(dead),
        "dead_items": len(dead_items),
        "dead_items_not_poison": len(dead_items - rec.poison),
        "poison_acknowledged": len(rec.poison & rec.acked),
        "poison_not_dead": len((rec.poison & rec.acked) - dead_items),
        **dead_letter_figures(dead, rec.runs),
        **latency_figures(rec),
        "order_violations": len(order),
        "order_examples": order[:EXAMPLES],
        "overlaps": len(overlaps),
        "overlap_examples": [describe(p) for p in overlaps[:EXAMPLES]],
        "failover_overlaps": len(failover_overlaps),
        "failover_overlap_examples": [describe(p) for p in failover_overlaps[:EXAMPLES]],
        "stale_overlaps": len(stale),
        "stale_overlap_examples": [describe(p) for p in stale[:EXAMPLES]],
        **fencing_violations(rec.claims, rec.settles, failovers),
        "runs": len(rec.runs),
        "runs_ok": results["ok"],
        "handler_raised": results["raised"],
        "handler_hung": results["hung"],
        "handler_partial": results["partial"],
        "settles_refused": len(refused),
        "acks_refused": sum(1 for s in refused if s["kind"] == "ack"),
        "settle_store_errors": sum(1 for s in rec.settles if s["ok"] is None),
        "log_reclaimed_warnings": rec.logs.count("was reclaimed by another worker"),
        "log_lease_lost_warnings": rec.logs.count("lost the lease of batch"),
        "log_outcome_not_recorded": rec.logs.count("could not record the outcome"),
        "log_tracebacks": rec.logs.count("Traceback (most recent call last)"),
        **unexpected_exceptions(rec.logs),
    }


def unexpected_exceptions(logs: str) -> dict[str, Any]:
    """Exceptions in the workers' tracebacks other than those of an unreachable store."""
    found = Counter(name for name in _EXCEPTION_LINE.findall(logs) if name not in EXPECTED_EXCEPTIONS)
    lines = [line for line in logs.splitlines() if _EXCEPTION_LINE.match(line)]
    examples = [line[:200] for line in lines if line.split(":", 1)[0] in found]
    return {
        "worker_unexpected_exceptions": sum(found.values()),
        "worker_unexpected_exception_types": dict(found),
        "worker_unexpected_exception_examples": examples[:EXAMPLES],
    }


# ---------------------------------------------------------------------- verdict and report


def violations(summary: dict[str, Any]) -> list[str]:
    """The guarantees a run broke; empty when it kept them all.

    Under ``appendfsync everysec`` a Redis crash may lose acknowledged writes (Redis'
    documented behaviour), so loss and fencing after a restart are reported, not judged.
    A failover may lose what it did not replicate: only what no failover explains is judged.
    """
    found = []
    lossy = summary["appendfsync"] != "always" and "redis" in summary["faults"]
    zero = ["order_violations", "overlaps", "unexpected_add_errors", "worker_unexpected_exits"]
    zero += ["worker_unexpected_exceptions", "dead_never_ran"]
    if "failover" in summary["faults"]:
        zero += ["lost_unattributed", "stale_acks_accepted", "double_acks", "failover_timeouts"]
    elif not lossy:
        zero += ["lost", "poison_not_dead", "stale_acks_accepted", "double_acks"]
    found += [f"{name} = {summary[name]}" for name in zero if summary[name]]
    if not summary["drained"]:
        found.append(f"not drained: {summary['final_stats']}")
    elif summary["leftover_keys"]:
        found.append(f"{summary['leftover_keys']} per-key records left in Redis after draining")
    if summary["longest_add_seconds"] > ADD_BOUND:
        found.append(f"an add took {summary['longest_add_seconds']} s (bound {ADD_BOUND} s)")
    return found


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a two-column table, then the examples of anything that went wrong."""
    rows = [(k, v) for k, v in summary.items() if not k.endswith("_examples") and k != "final_stats"]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for key, value in summary.items():
        if key.endswith("_examples") and value:
            lines.append(f"{key}:")
            lines += [f"  {example}" for example in value]
    return "\n".join(lines)
