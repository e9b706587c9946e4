"""One chaos producer process: add numbered items at a steady rate, recording each outcome.

Usage (internal): ``python -m tests.chaos.producer_main CONFIG_JSON RECORD_FILE``

Item ``n`` of producer ``p`` is ``{"p": p, "seq": n}`` under key ``k{n % keys}``, so the
sequence numbers of one producer under one key increase. Rare items carry ``"f": "poison"``
(the handler always raises) or ``"f": "hang"`` (the handler sleeps past its timeout once).

An item counts as acknowledged only once ``add`` has returned. On ``StoreUnavailable`` (or
anything else) the same item is retried, a bounded number of times within a bounded time,
and then given up; every try is recorded, with the longest single ``add`` call.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

import redbatch

RETRY_PAUSE = 0.1


class Producer:
    def __init__(self, config: dict[str, Any], record: Path) -> None:
        self.config = config
        self.p = int(config["producer"])
        self.keys = int(config["keys"])
        self.rng = random.Random(f"{config['seed']}-producer-{self.p}")
        self.fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.stopping = False
        self.batcher: redbatch.Batcher | None = None

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, orjson.dumps(record) + b"\n")

    def connect(self) -> redbatch.Batcher:
        """Open the store, retrying (bounded) while it is unreachable."""
        deadline = time.monotonic() + float(self.config["retry_seconds"])
        while True:
            try:
                store = redbatch.connect(self.config["url"], **self.config["store_options"])
                return redbatch.Batcher(store, self.config["name"], **self.config["batcher"])
            except redbatch.StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(RETRY_PAUSE)

    def item(self, n: int) -> dict[str, Any]:
        item: dict[str, Any] = {"p": self.p, "seq": n}
        poison, hang = float(self.config["poison_p"]), float(self.config["hang_p"])
        draw = self.rng.random()
        if draw < poison:
            item["f"] = "poison"
        elif draw < poison + hang:
            item["f"] = "hang"
        return item

    def add(self, batcher: redbatch.Batcher, n: int) -> None:
        """Add item ``n``, retrying on failure, and record the outcome."""
        key, item = f"k{n % self.keys}", self.item(n)
        first = time.monotonic()
        errors: list[str] = []
        longest = 0.0
        ok = False
        for _ in range(int(self.config["max_tries"])):
            started = time.monotonic()
            try:
                batcher.add(key, item)
                ok = True
            except redbatch.StoreUnavailable:
                errors.append("StoreUnavailable")
            except Exception as exc:  # anything else is a finding: record its type and go on
                errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:300])
            longest = max(longest, time.monotonic() - started)
            if ok or time.monotonic() - first > float(self.config["retry_seconds"]):
                break
            time.sleep(RETRY_PAUSE)  # back off before trying the same item again
        self.write(
            {"seq": n, "key": key, "f": item.get("f"), "ok": ok, "tries": len(errors) + ok}
            | {"errors": errors, "longest": longest, "t": time.time()}
        )

    def run(self) -> None:
        batcher = self.connect()
        end = time.monotonic() + float(self.config["seconds"])
        interval = 1.0 / float(self.config["rate"])
        next_at = time.monotonic()
        n = 0
        while not self.stopping and time.monotonic() < end:
            self.add(batcher, n)
            n += 1
            next_at = max(next_at + interval, time.monotonic() - 1.0)  # no burst after a stall
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing at the configured rate, not synchronisation
        self.write({"summary": True, "produced": n, "pid": os.getpid()})


def main() -> None:
    config = orjson.loads(sys.argv[1])
    producer = Producer(config, Path(sys.argv[2]))

    def on_term(signum: int, frame: object) -> None:
        producer.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    producer.run()


if __name__ == "__main__":
    main()
