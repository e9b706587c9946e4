"""The ceiling: what Redis and redis-py do with no batching logic at all.

- ``RawRpush``: ``RPUSH key payload`` per item, and for ``add_many`` one ``RPUSH`` per key
  with all its values, every key in one pipeline (one round trip), from one Python
  connection, with payloads encoded before the clock starts.
- ``redis_benchmark``: the C client against the same server.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Sequence

import redis


class RawRpush:
    """Pre-encoded payloads pushed with plain RPUSH."""

    pre_encoded = True

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def add(self, key: str, payload: bytes) -> None:
        self.r.rpush(f"raw:{key}", payload)

    def add_many(self, pairs: Sequence[tuple[str, bytes]]) -> None:
        by_key: dict[str, list[bytes]] = defaultdict(list)
        for key, payload in pairs:
            by_key[key].append(payload)
        pipe = self.r.pipeline(transaction=False)
        for key, payloads in by_key.items():
            pipe.rpush(f"raw:{key}", *payloads)
        pipe.execute()

    def close(self) -> None:
        self.r.close()


def redis_benchmark_available() -> bool:
    return shutil.which("redis-benchmark") is not None


def redis_benchmark(
    port: int,
    *,
    tests: str = "rpush,lpush",
    requests: int = 100_000,
    clients: int = 1,
    pipeline: int = 1,
    data_size: int = 100,
    timeout: float = 300.0,
) -> dict[str, float]:
    """Requests per second per test, from ``redis-benchmark --csv`` against 127.0.0.1."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark is not installed")
    args = [
        binary, "-h", "127.0.0.1", "-p", str(port), "-t", tests, "-n", str(requests),
        "-c", str(clients), "-P", str(pipeline), "-d", str(data_size), "--csv",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True)
    rates: dict[str, float] = {}
    for row in csv.reader(io.StringIO(done.stdout)):
        if len(row) >= 2 and row[0] != "test":
            try:
                rates[row[0].lower()] = float(row[1])
            except ValueError:
                continue
    return rates
