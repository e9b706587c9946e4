"""What every figure gets: the sizes, the private Redis server, a scratch directory, the
redbatch stores under test, and a logger for progress lines."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.config import Sizes
from benchmarks.ledger import Ledger
from benchmarks.redis_server import STATS_DB, RedisServer
from benchmarks.subjects import StoreTarget


@dataclass
class Context:
    sizes: Sizes
    server: RedisServer
    workdir: Path
    stores: list[StoreTarget]
    verbose: bool = True
    started: float = field(default_factory=time.monotonic)

    @property
    def data_url(self) -> str:
        """Database 0: redbatch's Redis store, the baselines' keys, the Celery broker."""
        return self.server.url(0)

    @property
    def stats_url(self) -> str:
        return self.server.url(STATS_DB)

    def ledger(self) -> Ledger:
        return Ledger(self.stats_url)

    def reset(self) -> None:
        """Empty the server between measurements."""
        self.server.flush()

    def log(self, message: str) -> None:
        if self.verbose:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)
