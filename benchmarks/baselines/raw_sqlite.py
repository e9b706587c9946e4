"""The SQLite ceiling for ``add_many``: the same rows the SQLite store writes for a call
(``pending``: key id, arrival, digest, payload, with the same table and indexes), inserted by
one bare ``executemany`` in one transaction, in a WAL file with ``synchronous=FULL`` as the
store's default, payloads encoded and key ids known before the clock starts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from redbatch.stores.sqlite.schema import SCHEMA

_PENDING = [sql for sql in SCHEMA if "EXISTS pending " in sql or " ON pending " in sql]


class RawExecutemany:
    """Pre-encoded rows appended with one executemany per call."""

    pre_encoded = True

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        for sql in _PENDING:
            self.conn.execute(sql)
        self.key_ids: dict[str, int] = {}

    def add_many(self, pairs: Sequence[tuple[str, bytes]]) -> None:
        now = time.time_ns() // 1_000_000
        ids = self.key_ids
        rows = [(ids.setdefault(key, len(ids) + 1), now, "", payload) for key, payload in pairs]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO pending (key_id, arrived_at, digest, payload) VALUES (?, ?, ?, ?)", rows
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
