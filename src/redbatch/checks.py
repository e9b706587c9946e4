"""Checking and encoding what users hand in, before anything is stored: items (JSON values
only, no NaN, within a size), keys, batcher names, durations and counts, dead-letter ids,
and whether a handler is async. Each refusal is a typed error naming what was wrong."""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import re
from collections.abc import Sequence
from typing import Any

import orjson

from redbatch.errors import ConfigError, InvalidItem, InvalidKey
from redbatch.types import CorruptItem

MAX_KEY_LENGTH = 512
DEFAULT_MAX_ITEM_BYTES = 1 << 20
MAX_DURATION = 100 * 365 * 24 * 3600
"""The longest duration setting, in seconds (100 years): its milliseconds, added to a time, fit
every store's integers (SQLite's 64 bits, the doubles of Redis' scores and Lua)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Only JSON values: dataclasses, datetimes and subclasses of str/int/dict/list are refused
# rather than silently converted into something the handler would not recognise.
DUMPS_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def encode_item(item: Any, max_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> bytes:
    """Encode one item as JSON, refusing non-JSON values and items over ``max_bytes``."""
    try:
        encoded = orjson.dumps(item, option=DUMPS_OPTIONS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidItem(f"item is not a JSON value: {exc}") from None
    # orjson writes NaN and infinities as null: look for them only when a null was written
    # (find is some 40 ns faster than ``in`` on bytes).
    if encoded.find(b"null") != -1 and _holds_non_finite(item):
        raise InvalidItem("item is not a JSON value: it holds a NaN or an infinity, which JSON cannot hold")
    if len(encoded) > max_bytes:
        raise InvalidItem(f"item is {len(encoded)} bytes encoded, over the {max_bytes} byte limit")
    # orjson's bytes keep its whole working buffer: 4 KB for a small item, 3 to 8 times the
    # length of a large one. Items are held by the thousand (add_many, the memory store), so
    # keep a compact copy; %-formatting makes one for about 20 ns (bytes(memoryview(...)): 140).
    return b"%b" % encoded


def _holds_non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides in ``value`` (a JSON value, as orjson accepted it)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_holds_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_non_finite(v) for v in value)
    return False


def item_digest(item: Any) -> str:
    """The dedupe identity of an item: equal JSON, key order ignored."""
    canonical = orjson.dumps(item, option=DUMPS_OPTIONS | orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def decode_item(payload: bytes) -> Any:
    """An item from its stored JSON, or a ``CorruptItem`` when the bytes are not JSON, so that
    listing what a store holds never fails on one bad item."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return CorruptItem(payload, f"not JSON: {exc}")


def is_async_callable(fn: object) -> bool:
    """True for an ``async def`` function or method, a callable object whose ``__call__`` is
    one, or a ``functools.partial`` of either."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False  # calling a class makes an instance, whatever its __call__ is
    return inspect.iscoroutinefunction(type(fn).__call__)  # where a call looks it up


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidKey(f"a key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("a key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"a key is at most {MAX_KEY_LENGTH} characters, this one has {len(key)}")
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, as json.loads('"\\ud800"') makes
            raise InvalidKey(
                f"a key must be text UTF-8 can encode: it holds a lone surrogate at position {exc.start}"
            ) from None
    return key


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"a batcher name is 1-64 characters of letters, digits, '_', '.', '-': {name!r}")
    return name


def seconds_to_ms(name: str, value: float, *, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, not {value}")
    if value > MAX_DURATION:
        raise ConfigError(f"{name} must be at most {MAX_DURATION} seconds (100 years), not {value}")
    ms = round(value * 1000)
    if ms == 0 and not allow_zero:  # a positive value that rounds to nothing would mean 0
        raise ConfigError(f"{name} must be at least 0.001 seconds, not {value}")
    return ms


def dead_letter_ids(ids: Sequence[str] | None) -> list[str] | None:
    """Dead-letter ids as a list; a lone string is refused, not read one id per character."""
    if ids is None:
        return None
    if isinstance(ids, str | bytes):
        raise ConfigError(f"ids must be a list of dead-letter ids, not a lone string: [{ids!r}]?")
    return list(ids)


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, not {value!r}")
    return value
