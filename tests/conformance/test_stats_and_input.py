"""Counters that survive reconnects, and bad input refused with nothing stored."""

from __future__ import annotations

import json
import math
import tracemalloc
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

import redbatch
from redbatch import Batcher, ConfigError, InvalidItem, InvalidKey
from redbatch.checks import MAX_DURATION, encode_item
from redbatch.stores.base import Store
from tests.conformance.helpers import ack, claim, claim_one, fail, make
from tests.conftest import FakeClock


def test_stats_follow_every_transition(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=10)
    assert b.stats().last_flush_at is None
    b.add_many([("a", 1), ("a", 2), ("a", 3), ("b", 4)])
    clock.advance(2)
    s = b.stats()
    assert (s.open_keys, s.buffered_items, s.in_flight, s.oldest_item_age) == (2, 4, 0, 2.0)
    running = claim_one(b)  # a: [1, 2]
    s = b.stats()
    assert (s.buffered_items, s.in_flight) == (2, 1)
    assert ack(b, running)
    s = b.stats()
    assert (s.flushed_batches, s.flushed_items, s.in_flight) == (1, 2, 0)
    assert s.last_flush_at == clock.now / 1000
    assert s.seconds_since_last_flush == 0
    clock.advance(10)
    for claimed in claim(b):
        assert fail(b, claimed)
    s = b.stats()
    assert (s.retrying, s.buffered_items, s.open_keys, s.seconds_since_last_flush) == (2, 0, 2, 10)


def test_state_survives_reconnecting(
    store_kind: str, store_factory: tuple[str, dict[str, str]], clock: FakeClock
) -> None:
    if store_kind == "memory":
        pytest.skip("memory:// is not durable, by design")
    url, options = store_factory
    first = redbatch.connect(url, **options)
    b = make(first, clock, max_wait=1)
    b.add_many([("k", 1), ("j", 2)])
    clock.advance(1)
    for claimed in claim(b):
        assert ack(b, claimed) if claimed.lease.key == "k" else fail(b, claimed, retry_in=None)
    b.add("k", "pending")
    first.close()
    again = make(redbatch.connect(url, **options), clock, max_wait=1)
    s = again.stats()
    assert (s.flushed_batches, s.dead, s.buffered_items) == (1, 1, 1)
    assert s.last_flush_at == clock.now / 1000
    assert [p.value for p in again.peek("k")] == ["pending"]
    again.store.close()


@dataclass
class Point:
    x: int


LONE_SURROGATE = json.loads('"\\ud800"')  # what a JSON request body may hold
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    "item",
    [
        *(object(), {1, 2}, b"bytes", Point(1), datetime(2026, 1, 1), {1: "non-str key"}, 2**70, lambda: 0),
        *(LONE_SURROGATE, ["ok", f"a{LONE_SURROGATE}b"], {LONE_SURROGATE: 1}, {"k": {LONE_SURROGATE: 1}}),
        *(NAN, INF, -INF, {"a": None, "b": [1.5, NAN]}, (1, INF), {"deep": [[[{"x": -INF}]]]}),
    ],
    ids=[
        *("object", "set", "bytes", "dataclass", "datetime", "int-key", "huge-int", "function"),
        *("surrogate", "surrogate-in-list", "surrogate-key", "nested-surrogate-key"),
        *("nan", "inf", "-inf", "nan-beside-null", "inf-in-tuple", "deep-inf"),
    ],
)
def test_non_json_items_are_refused_and_nothing_is_stored(store: Store, clock: FakeClock, item: Any) -> None:
    b = make(store, clock, max_wait=0)
    with pytest.raises(InvalidItem):
        b.add("k", item)
    with pytest.raises(InvalidItem):
        b.add_many([("k", "fine"), ("k", item)])
    assert b.stats().buffered_items == 0
    assert claim(b) == []


def test_items_over_the_size_limit_are_refused(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_item_bytes=100)
    b.add("k", "x" * 98)  # 100 bytes with its quotes
    with pytest.raises(InvalidItem, match="over the 100 byte limit"):
        b.add("k", "x" * 99)
    assert b.stats().buffered_items == 1


@pytest.mark.parametrize(
    "key",
    ["", None, 7, b"k", "x" * 513, LONE_SURROGATE, f"user-{LONE_SURROGATE}", "\udc80"],
    ids=["empty", "none", "int", "bytes", "long", "surrogate", "surrogate-inside", "low-surrogate"],
)
def test_bad_keys_are_refused_and_nothing_is_stored(store: Store, clock: FakeClock, key: Any) -> None:
    b = make(store, clock)
    with pytest.raises(InvalidKey):
        b.add(key, 1)
    with pytest.raises(InvalidKey):
        b.add_many([("fine", 1), (key, 1)])
    with pytest.raises(InvalidKey):
        b.peek(key)
    with pytest.raises(InvalidKey):
        b.clear(key)
    if key is not None:  # flush(None) flushes every key
        with pytest.raises(InvalidKey):
            b.flush(key)
    assert b.stats().buffered_items == 0


def test_keys_of_any_characters_round_trip(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    keys = ["a:b:c", "{tag}", "ünï cødé ✓", "x" * 512, "with\nnewline", "*?[]"]
    b.add_many([(k, k) for k in keys])
    assert sorted(c.lease.key for c in claim(b)) == sorted(keys)


def test_json_values_of_every_kind_round_trip(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    values: list[Any] = [None, True, False, 0, -1, 2**63 - 1, 1.5, "", "ü✓", [], {}, {"a": [1, {"b": None}]}]
    values += ["null", {"null": None, "x": [0.1, -2.5e300, None]}, "\U0001f600 beyond the BMP"]
    b.add_many([("k", v) for v in values])
    assert b.peek("k") and [p.value for p in b.peek("k")] == values


@pytest.mark.parametrize(
    "options",
    [
        {"max_items": 0},
        {"max_items": 1.5},
        {"max_wait": -1},
        {"idle": -0.1},
        {"max_wait": math.nan},
        {"max_attempts": 0},
        {"lease": 0},
        {"lease": 0.01},
        {"backoff": -1},
        {"timeout": 0},
        {"max_item_bytes": 0},
        *(
            {name: 1e16}
            for name in ("max_wait", "idle", "backoff", "max_backoff", "lease", "timeout", "dead_letter_ttl")
        ),
        {"max_wait": MAX_DURATION + 1},
        {"max_wait": None},  # None is no debounce for idle only; here it used to mean 0
        {"backoff": None},
        {"timeout": 0.0001},  # rounds to 0 ms: every handler would time out at once
        {"dead_letter_ttl": 0.0004},  # rounds to 0 ms: every dead letter purged at once
    ],
)
def test_invalid_settings_are_refused(store: Store, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Batcher(store, "b", **options)


def test_the_longest_durations_work_end_to_end(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=MAX_DURATION, idle=MAX_DURATION, lease=MAX_DURATION)
    b.add("k", 1)
    assert store.next_due_ms(b.spec) == clock.now + MAX_DURATION * 1000
    b.flush("k")
    claimed = claim_one(b)
    assert fail(b, claimed, retry_in=None)
    assert b.purge_dead(older_than=MAX_DURATION) == 0
    with pytest.raises(ConfigError):
        b.purge_dead(older_than=1e16)
    assert b.stats().dead == 1


@pytest.mark.parametrize("name", ["", "has space", "a{b}", "x" * 65, None, "abc\n"])
def test_invalid_batcher_names_are_refused(store: Store, name: Any) -> None:
    with pytest.raises(ConfigError):
        Batcher(store, name)


def test_dead_letter_ids_must_be_a_list_and_purge_takes_ids_or_an_age(store: Store, clock: FakeClock) -> None:
    b = make(store, clock)
    b.add("k", 1)
    b.flush("k")
    claimed = claim_one(b)
    assert fail(b, claimed, retry_in=None)
    with pytest.raises(ConfigError, match="lone string"):
        b.replay(claimed.lease.batch_id)  # type: ignore[arg-type]  # read as one id per letter
    with pytest.raises(ConfigError, match="lone string"):
        b.purge_dead(claimed.lease.batch_id)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not both"):
        b.purge_dead([claimed.lease.batch_id], older_than=3600)
    assert [d.id for d in b.dead_letters()] == [claimed.lease.batch_id]  # nothing changed


def test_every_error_is_a_redbatch_error() -> None:
    for error in (InvalidItem, InvalidKey, ConfigError, redbatch.NotFound, redbatch.StoreUnavailable):
        assert issubclass(error, redbatch.RedbatchError)


SMALL_ITEM = {"user": "agent-000000", "reply": "thanks for the quick help", "n": 0, "ok": True}


def traced(action: Any) -> tuple[int, int]:
    """Bytes that ``action()`` allocated and still holds, and at its peak, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        kept = action()
        held, peak = tracemalloc.get_traced_memory()
        del kept
        return held - before, peak - before
    finally:
        tracemalloc.stop()


def test_encoded_items_hold_only_their_bytes() -> None:
    """orjson's output keeps its whole working buffer (about 4 KB) unless copied compact."""
    assert len(encode_item(SMALL_ITEM)) < 100
    held, _ = traced(lambda: [encode_item({**SMALL_ITEM, "n": n}) for n in range(10_000)])
    assert held < 10_000 * 200, f"{held / 10_000:.0f} bytes per encoded item"


def test_add_many_holds_items_compactly(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=100_000, max_wait=60)
    b.add("warm-up", 0)  # connections, scripts and tables are made before measuring
    held, peak = traced(lambda: b.add_many((f"k{n % 10}", {**SMALL_ITEM, "n": n}) for n in range(10_000)))
    assert b.stats().buffered_items == 10_001
    assert held < 10_000 * 400, f"{held / 10_000:.0f} bytes held per item"
    assert peak < 10_000 * 1_500, f"{peak / 10_000:.0f} bytes per item at the peak"


def test_oldest_keys_come_from_the_age_index(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=100)
    assert b.oldest_keys() == []
    b.add("late", 1)
    clock.advance(-3)  # an earlier producer clock: arrivals, not insertion order, decide
    b.add_many([("early", 1), ("early", 2), ("early", 3)])
    clock.advance(1)
    b.add_many([("tie-b", 1), ("tie-a", 1), ("<script>alert(1)</script>", "x")])
    clock.advance(5)
    rows = b.oldest_keys(10)
    assert [(r.key, r.pending) for r in rows] == [
        ("early", 3),
        ("<script>alert(1)</script>", 1),
        ("tie-a", 1),
        ("tie-b", 1),
        ("late", 1),
    ]
    assert (rows[0].oldest_arrival, rows[0].oldest_item_age) == ((clock.now - 6000) / 1000, 6.0)
    assert [r.key for r in b.oldest_keys(2)] == ["early", "<script>alert(1)</script>"]
    b.flush("early")
    claimed = claim_one(b)  # early's first two items run; its third still waits
    assert claimed.lease.key == "early"
    assert [(r.key, r.pending) for r in b.oldest_keys(1)] == [("early", 1)]
    assert fail(b, claimed, retry_in=None)
    b.clear("early")
    assert "early" not in [r.key for r in b.oldest_keys(10)]
    with pytest.raises(ConfigError):
        b.oldest_keys(0)
