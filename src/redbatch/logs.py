"""Structured logs: the fields every record about a batch carries, and a JSON formatter.

redbatch logs through the standard ``logging`` module, under the ``redbatch`` logger. Every
record about one batch carries, as attributes set through ``extra`` (see ``batch_fields``):

- ``batcher``: the batcher's name;
- ``key``: the batch's key;
- ``batch_id``: the batch's id, stable across its attempts;
- ``attempt``: the attempt number, from 1.

A text formatter shows them only if its format string names them (``%(batch_id)s``);
``JsonFormatter`` writes every such field of a record. Records at INFO and below carry no
item payload and no secret (store URLs are masked); a handler's failure is logged at WARNING
with the last line of its error, which is the application's own text.

``configure_logging`` is what ``redbatch worker`` uses: ``--log-format json`` or
``REDBATCH_LOG_FORMAT=json`` selects one JSON object per line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

from redbatch.errors import ConfigError

if TYPE_CHECKING:
    from redbatch.types import ClaimedBatch

LogFormat = Literal["text", "json"]
LOG_FORMAT_ENV = "REDBATCH_LOG_FORMAT"

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def batch_fields(batcher: str, claimed: ClaimedBatch) -> dict[str, Any]:
    """The structured fields of a log record about one batch, for ``extra=``.

    Args:
        batcher: The name of the batcher (or other source) the batch belongs to.
        claimed: The batch as its worker claimed it.

    Returns:
        ``batcher``, ``key``, ``batch_id`` and ``attempt``: nothing of the items.
    """
    return {
        "batcher": batcher,
        "key": claimed.lease.key,
        "batch_id": claimed.lease.batch_id,
        "attempt": claimed.attempt,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every ``extra`` field.

    ``time`` is ISO 8601 in UTC with milliseconds; an exception's traceback is in
    ``exception``. Values that JSON cannot hold are written as their ``str``. Keys and
    messages are JSON strings, so a hostile key cannot forge a line or a field.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def log_format_from_env(default: LogFormat = "text") -> LogFormat:
    """The format ``REDBATCH_LOG_FORMAT`` names (``text`` or ``json``), else ``default``.

    Raises:
        ConfigError: The variable holds anything else.
    """
    value = os.environ.get(LOG_FORMAT_ENV, "").strip().lower()
    if not value:
        return default
    if value not in ("text", "json"):
        raise ConfigError(f"{LOG_FORMAT_ENV} must be 'text' or 'json', not {value!r}")
    return "json" if value == "json" else "text"


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing ``JsonFormatter`` lines to ``stream`` (default: stderr)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    return handler
