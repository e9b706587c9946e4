"""The items every subject adds: a JSON object with a unique ``seq`` padded to a fixed size.

Sizes are exact after encoding, so "payload bytes" means the same thing for every subject,
and the sequence number lets the loss figure count from the handler's own record.
"""

from __future__ import annotations

from typing import Any

import orjson


def make_item(seq: int, size: int) -> dict[str, Any]:
    """``{"seq": seq, "pad": "xxx..."}`` whose compact JSON encoding is ``size`` bytes."""
    bare = len(orjson.dumps({"seq": seq, "pad": ""}))
    return {"seq": seq, "pad": "x" * max(0, size - bare)}


def make_items(start: int, count: int, size: int) -> list[dict[str, Any]]:
    return [make_item(seq, size) for seq in range(start, start + count)]


def encode(item: Any) -> bytes:
    return orjson.dumps(item)


def key_for(index: int, keys: int) -> str:
    """The key of the ``index``-th item when items are spread round-robin over ``keys``."""
    return f"k{index % keys}"


def keyed_items(start: int, count: int, size: int, keys: int) -> list[tuple[str, dict[str, Any]]]:
    return [(key_for(seq, keys), make_item(seq, size)) for seq in range(start, start + count)]
