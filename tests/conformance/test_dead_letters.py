"""Dead letters: replayed in their original order, deduplicated like any waiting item,
unknown ids refused with nothing changed, and (on Redis) index entries whose record was
lost dropped, not looped on."""

from __future__ import annotations

from typing import Any

import pytest

from redbatch import Batcher, NotFound
from redbatch.stores.base import Store
from redbatch.stores.redis import RedisStore
from tests.conformance.helpers import claim_one, fail, items, make
from tests.conftest import FakeClock


def bury(b: Batcher, *values: Any, key: str = "k") -> str:
    """Add ``values`` under ``key``, claim them as one batch and dead-letter it; return its id."""
    b.add_many([(key, v) for v in values])
    b.flush(key)
    claimed = claim_one(b)
    assert claimed.lease.key == key and items(claimed) == list(values)
    assert fail(b, claimed, retry_in=None)
    return claimed.lease.batch_id


def waiting(b: Batcher, key: str = "k") -> list[Any]:
    return [p.value for p in b.peek(key, 1000)]


# ---------------------------------------------------------------- order


@pytest.mark.parametrize("ids", ["all", "oldest-first", "newest-first"])
def test_replay_puts_a_keys_dead_letters_back_in_their_original_order(
    store: Store, clock: FakeClock, ids: str
) -> None:
    b = make(store, clock, max_wait=60, max_items=100)
    first = bury(b, 1, 2)  # the clock does not move: both die in the same millisecond
    other = bury(b, "o", key="other")
    second = bury(b, 3)
    b.add("k", 4)
    chosen = {"all": None, "oldest-first": [first, second, other], "newest-first": [second, other, first]}
    assert b.replay(chosen[ids]) == 4
    assert waiting(b) == [1, 2, 3, 4]
    assert waiting(b, "other") == ["o"]
    assert items(claim_one(b)) in ([1, 2, 3, 4], ["o"])


def test_replay_of_many_dead_letters_keeps_each_keys_order(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More letters than one step of the Redis store takes, some dying in the same millisecond."""
    monkeypatch.setattr("redbatch.stores.redis.dead_letters._CHUNK", 2)
    b = make(store, clock, max_wait=60, max_items=100)
    for n in range(7):
        bury(b, n)
        bury(b, f"j{n}", key="j")
        if n % 3 == 2:
            clock.advance(0.001)
    assert b.replay() == 14
    assert waiting(b) == list(range(7))
    assert waiting(b, "j") == [f"j{n}" for n in range(7)]
    assert b.stats().dead == 0


def test_a_letter_replayed_later_goes_in_front_of_earlier_ones(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=60, max_items=100)
    first = bury(b, 1)
    second = bury(b, 2)
    assert b.replay([second]) == 1
    assert b.replay([first]) == 1
    assert waiting(b) == [1, 2]


# ---------------------------------------------------------------- dedupe


def test_a_replayed_item_collapses_into_an_equal_waiting_one(store: Store, clock: FakeClock) -> None:
    """Dedupe means no two equal items wait under a key at once, replayed ones included."""
    b = make(store, clock, dedupe=True, max_wait=60, max_items=100)
    bury(b, "x", "y")
    b.add_many([("k", "z"), ("k", "x")])  # x again: the dead x is not waiting, so this one is kept
    assert b.replay() == 2
    assert waiting(b) == ["x", "y", "z"]  # the earlier position is kept
    assert b.stats().buffered_items == 3
    b.add_many([("k", "x"), ("k", "y"), ("k", "z")])
    assert waiting(b) == ["x", "y", "z"]
    assert items(claim_one(b)) == ["x", "y", "z"]


def test_equal_items_of_several_dead_letters_collapse_into_the_oldest(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, dedupe=True, max_wait=60, max_items=100)
    bury(b, "x")
    bury(b, "w", "x")
    assert b.replay() == 3
    assert waiting(b) == ["x", "w"]
    assert b.stats().buffered_items == 2


def test_after_a_replay_the_dedupe_set_is_exactly_the_waiting_items(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, dedupe=True, max_wait=60, max_items=2)
    bury(b, "x")
    b.add("k", "x")
    b.add("k", "y")
    assert b.replay() == 1
    assert waiting(b) == ["x", "y"]
    assert items(claim_one(b)) == ["x", "y"]  # neither waits any more: both may be added again
    b.add_many([("k", "x"), ("k", "x"), ("k", "y")])
    assert waiting(b) == ["x", "y"]


# ---------------------------------------------------------------- unknown ids


@pytest.mark.parametrize("operation", ["replay", "purge_dead"])
def test_unknown_ids_are_not_found_and_nothing_is_changed(
    store: Store, clock: FakeClock, operation: str
) -> None:
    b = make(store, clock, max_wait=60, max_items=100)
    keys = [f"key-{n}" for n in range(6)]  # over every partition of a partitioned store
    ids = [bury(b, n, key=key) for n, key in enumerate(keys)]
    act = getattr(b, operation)
    with pytest.raises(NotFound, match="'typo'") as raised:
        act([*ids, "typo", "other-typo"])
    assert "other-typo" in str(raised.value) and ids[0] not in str(raised.value)
    with pytest.raises(NotFound, match="'typo'"):
        act(["typo"])
    assert sorted(d.id for d in b.dead_letters()) == sorted(ids)
    assert all(waiting(b, key) == [] for key in keys)
    assert act([ids[0], ids[0]]) == 1
    assert act([]) == 0
    assert act(ids[1:]) == len(ids) - 1
    assert b.dead_letters() == []
    with pytest.raises(NotFound, match=ids[0]):
        act([ids[0]])  # gone once replayed or purged


@pytest.mark.parametrize("operation", ["replay", "purge_dead"])
def test_a_letter_gone_while_ids_are_looked_up_leaves_every_other_one(
    store: Store, clock: FakeClock, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partitioned Redis store finds each id's partition before its transaction."""
    if not isinstance(store, RedisStore) or store.partitions == 1:
        pytest.skip("only a partitioned Redis store looks ids up before changing them")
    b = make(store, clock, max_wait=60, max_items=100)
    keys = [f"key-{n}" for n in range(6)]
    ids = [bury(b, n, key=key) for n, key in enumerate(keys)]
    locate = store._locate

    def racing(*args: Any) -> Any:
        where = locate(*args)
        monkeypatch.setattr(store, "_locate", locate)
        part = store._partition_of(b.name, keys[0])
        assert store._eval("purge", [part.dead], [part.base, "ids", ids[0]])[0] == 1  # someone else's
        return where

    monkeypatch.setattr(store, "_locate", racing)
    with pytest.raises(NotFound, match=ids[0]):
        getattr(b, operation)(ids)
    assert sorted(d.id for d in b.dead_letters()) == sorted(ids[1:])
    assert all(waiting(b, key) == [] for key in keys)


# ---------------------------------------------------------------- lost records (Redis)


def lose_record(store: Store, batch_id: str) -> None:
    """Delete a dead letter's record but not its index entry, as eviction or a hand DEL does."""
    if not isinstance(store, RedisStore):
        pytest.skip("only the Redis store keeps a dead letter's index apart from its record")
    names = list(store.client.scan_iter(match=f"*:x*:{batch_id}"))
    assert len(names) == 2, names
    store.client.delete(*names)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("operation", ["replay", "replay-id", "purge", "purge-older", "purge-id", "list"])
def test_an_index_entry_whose_record_was_lost_is_dropped(
    store: Store,
    clock: FakeClock,
    operation: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("redbatch.stores.redis.dead_letters._CHUNK", 2)
    b = make(store, clock, max_wait=60, max_items=100)
    lost = bury(b, "lost", key="a")
    kept = [bury(b, f"kept-{n}", key=f"b{n}") for n in range(3)]
    lose_record(store, lost)
    assert b.stats().dead == 4
    if operation == "replay":
        assert b.replay() == 3
    elif operation == "purge":
        assert b.purge_dead() == 3
    elif operation == "purge-older":
        clock.advance(10)
        assert b.purge_dead(older_than=5) == 3
    elif operation == "list":
        assert sorted(d.id for d in b.dead_letters()) == sorted(kept)
    else:
        with pytest.raises(NotFound, match=lost):
            b.replay([lost]) if operation == "replay-id" else b.purge_dead([lost])
    assert "dropped 1 dead-letter index entries whose records were gone" in caplog.text
    left = [] if operation in ("replay", "purge", "purge-older") else kept
    assert sorted(d.id for d in b.dead_letters()) == sorted(left)
    assert b.stats().dead == len(left)
    assert waiting(b, "b0") == (["kept-0"] if operation == "replay" else [])
