"""The checker's failover rules on hand-written records: loss and fencing anomalies are put
down to a failover only when they happened just before its kill, on the killed master's keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from .checker import FAILOVER_WINDOW, FOLLOW_WINDOW, REPLY_SLACK, check
from .failover import sentinel_promotions

KILL = 1000.0


def write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def added(seq: int, key: str, t: float) -> dict[str, Any]:
    return {"seq": seq, "key": key, "f": None, "ok": True, "tries": 1, "errors": [], "longest": 0.0, "t": t}


def claim(bid: str, key: str, token: int, t: float) -> dict[str, Any]:
    return {"kind": "claim", "bid": bid, "key": key, "token": token, "attempt": 1, "t": t, "pid": 1}


def ack(bid: str, key: str, token: int, t: float) -> dict[str, Any]:
    return {"kind": "ack", "bid": bid, "key": key, "token": token, "attempt": 1, "ok": True, "t": t, "pid": 1}


def run(bid: str, key: str, seqs: list[int], t: float) -> dict[str, Any]:
    items = [{"p": 0, "seq": s} for s in seqs]
    return {"kind": "run", "bid": bid, "key": key, "attempt": 1, "items": items}  | {
        "start": t, "end": t + 0.01, "pid": 1, "result": "ok", "failed": []
    }  # fmt: skip


def test_loss_and_refencing_just_before_a_kill_are_the_failovers(tmp_path: Path) -> None:
    write(tmp_path / "failovers.jsonl", [{"n": 1, "killed_at": KILL, "keys": ["a"]}])
    write(
        tmp_path / "producer-0.jsonl",
        [
            added(0, "a", KILL - 10),  # delivered
            added(1, "a", KILL - 0.2),  # lost with the old master: the failover's
            added(2, "b", KILL - 0.2),  # lost, but b did not live on the killed master
            added(3, "a", KILL - FAILOVER_WINDOW - 1),  # lost long before the kill
        ],
    )
    write(
        tmp_path / "worker-0.jsonl",
        [
            claim("x", "a", 5, KILL - 10),
            run("x", "a", [0], KILL - 10),
            claim("x", "a", 7, KILL - 0.1),  # a re-claim the old master granted, then undone...
            ack("x", "a", 5, KILL + 3),  # ...so token 5 is current again on the new master
            claim("y", "b", 3, KILL - 30),
            claim("y", "b", 4, KILL - 20),  # a newer claim nothing undid
            ack("y", "b", 3, KILL - 19),  # a stale ack accepted: a violation
        ],
    )
    summary = check(tmp_path, [])
    assert summary["lost"] == 3
    assert summary["lost_per_failover"] == [1]
    assert summary["lost_unattributed"] == 2
    assert summary["failover_stale_acks"] == 1
    assert summary["stale_acks_accepted"] == 1


def test_a_batch_acknowledged_twice_across_a_failover(tmp_path: Path) -> None:
    write(tmp_path / "failovers.jsonl", [{"n": 1, "killed_at": KILL, "keys": ["a"]}])
    write(tmp_path / "producer-0.jsonl", [added(0, "a", KILL - 5)])
    write(
        tmp_path / "worker-0.jsonl",
        [
            claim("x", "a", 1, KILL - 5),
            run("x", "a", [0], KILL - 5),
            ack("x", "a", 1, KILL - 0.05),  # accepted by the old master, never replicated
            claim("x", "a", 2, KILL + 4),  # the new master's lease lapsed: run again
            run("x", "a", [0], KILL + 4),
            ack("x", "a", 2, KILL + 4.1),
            claim("z", "a", 1, KILL + 5),
            ack("z", "a", 1, KILL + 5.1),
            ack("z", "a", 1, KILL + 5.2),  # twice with no failover between: a violation
        ],
    )
    summary = check(tmp_path, [])
    assert summary["lost"] == 0 and summary["duplicates"] == 1
    assert summary["failover_double_acks"] == 1
    assert summary["double_acks"] == 1


def test_an_unplanned_failover_leaves_two_masters_for_a_while(tmp_path: Path) -> None:
    """A Sentinel failed a live master over at KILL: writes to it until the clients follow
    (FOLLOW_WINDOW) may be lost, and runs granted by both masters may overlap."""
    planned = {"n": 1, "killed_at": KILL - 100, "keys": ["a"]}
    write(
        tmp_path / "failovers.jsonl", [planned, {"n": 2, "killed_at": KILL, "keys": ["a"], "unplanned": True}]
    )
    late = KILL + (REPLY_SLACK + FOLLOW_WINDOW) / 2  # after a kill's slack, inside the follow window
    write(
        tmp_path / "producer-0.jsonl",
        [
            added(0, "a", late),
            added(1, "a", KILL - 100 + late - KILL),
            added(2, "a", KILL + FOLLOW_WINDOW + 1),
        ],
    )
    write(
        tmp_path / "worker-0.jsonl",
        [
            claim("x", "a", 1, KILL + 1),
            run("x", "a", [9], KILL + 1),  # granted by the old master...
            ack("x", "a", 1, KILL + 1.02),
            claim("y", "a", 1, KILL + 1.005),
            run("y", "a", [8], KILL + 1.005),  # ...and this one by the new one, at once
            ack("y", "a", 1, KILL + 1.02),
        ],
    )
    summary = check(tmp_path, [])
    assert summary["lost"] == 3
    assert summary["lost_per_failover"] == [0, 1]  # a kill's window ends REPLY_SLACK after it
    assert summary["lost_unattributed"] == 2
    assert summary["overlaps"] == 0 and summary["failover_overlaps"] == 1


def test_promotions_are_read_from_the_sentinels_logs(tmp_path: Path) -> None:
    log = tmp_path / "sentinel.log"
    log.write_bytes(
        b"6718:X 25 Nov 2026 11:27:35.103 # +elected-leader master mymaster 127.0.0.1 50615\n"
        b"6718:X 25 Nov 2026 11:27:35.194 * +failover-state-send-slaveof-noone slave "
        b"127.0.0.1:47201 127.0.0.1 47201 @ mymaster 127.0.0.1 50615\n"
    )
    [(at, old, new)] = sentinel_promotions([log, tmp_path / "absent.log"])
    assert (old, new) == (50615, 47201)
    assert round(at % 60, 3) == 35.194  # local time, to the ms
