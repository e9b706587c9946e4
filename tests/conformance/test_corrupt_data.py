"""Data found corrupt in a store: shown for what it is, dead-lettered with a reason, and
harmless to everything else."""

from __future__ import annotations

from redbatch import CorruptItem
from redbatch.stores.base import Store
from redbatch.types import Entry
from tests.conformance.helpers import claim_one, fail, make
from tests.conftest import FakeClock


def test_an_item_that_does_not_decode_is_listed_with_its_raw_bytes(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add("k", {"fine": 1})
    store.append(b.spec, [Entry("k", b"{not json", "")], clock())
    fine, bad = b.peek("k")
    assert fine.value == {"fine": 1}
    assert isinstance(bad.value, CorruptItem) and bad.value.raw == b"{not json"
    assert "not JSON" in bad.value.reason
    assert fail(b, claim_one(b), "corrupt data: an item is not JSON", retry_in=None)
    clock.advance(1)
    b.add("k", "next")  # a later dead letter of the same batcher lists as well
    assert fail(b, claim_one(b), "boom", retry_in=None)
    first, second = b.dead_letters()
    assert first.items[0] == {"fine": 1}
    assert first.items[1] == CorruptItem(b"{not json", bad.value.reason)
    assert first.error == "corrupt data: an item is not JSON"
    assert second.items == ["next"]
