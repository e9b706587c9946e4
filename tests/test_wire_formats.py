"""What redbatch writes into a store by its own rules: batch ids and job payloads."""

from __future__ import annotations

import re
import time

import pytest

from redbatch.jobtypes import Payload
from redbatch.stores.base import new_batch_id, new_batch_ids

ID = re.compile(r"[0-9a-f]{28}")


def test_batch_ids_made_together_are_unique_and_of_the_one_form() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_batch_ids(34)
    after = time.time_ns() // 1_000_000
    assert len(ids) == len(set(ids)) == 34
    assert all(ID.fullmatch(i) for i in ids)
    assert all(before <= int(i[:12], 16) <= after for i in ids)  # time-ordered by their prefix
    assert ID.fullmatch(new_batch_id())
    assert new_batch_ids(0) == []


def test_a_payload_comes_back_as_it_was_encoded() -> None:
    payload = Payload("f", {"a": [1, 2]}, ("g", "h"), 3, 2.5, 4, "parent", 1, "grp")
    assert Payload.decode(payload.encode()) == payload
    assert Payload.decode(b'{"fn": "f"}') == Payload("f", None)


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"fn": 1}',
        b'{"fn": "f", "rest": "g"}',
        b'{"fn": "f", "rest": ["g", 2]}',
        b'{"fn": "f", "timeout": "1"}',
        b'{"fn": "f", "timeout": true}',
        b'{"fn": "f", "max_attempts": 0}',
        b'{"fn": "f", "max_attempts": true}',
        b'{"fn": "f", "max_attempts": 1.5}',
        b'{"fn": "f", "lane": "x"}',
        b'{"fn": "f", "lane": true}',
        b'{"fn": "f", "step": 1.5}',
    ],
)
def test_a_payload_that_is_not_one_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="a job payload"):
        Payload.decode(raw)
