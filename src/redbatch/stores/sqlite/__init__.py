"""The SQLite store: batching state in one local file, each protocol operation one transaction."""

from redbatch.stores.sqlite.store import (
    POLL_SECONDS,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_DUE,
    SELECT_DUE_DEADLINES,
    SELECT_NEXT_DUE,
    SELECT_OLDEST,
    SQLiteStore,
    sqlite_path,
)

__all__ = [
    "POLL_SECONDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_DUE",
    "SELECT_DUE_DEADLINES",
    "SELECT_NEXT_DUE",
    "SELECT_OLDEST",
    "SQLiteStore",
    "sqlite_path",
]
