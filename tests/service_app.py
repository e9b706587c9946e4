"""A module for ``redbatch serve --worker``: one batcher whose handler takes a moment, and
writes when it starts and when it finishes to the file ``SERVICE_APP_OUT`` names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import redbatch

store = redbatch.connect()
slow = redbatch.Batcher(store, "slow", max_wait=0, lease=10)


def _write(line: str) -> None:
    with Path(os.environ["SERVICE_APP_OUT"]).open("a") as out:
        out.write(line + "\n")


@slow.handler
def handle(batch: redbatch.Batch) -> None:
    for item in batch.items:
        _write(f"started {item}")
        time.sleep(0.5)  # the work a SIGTERM arriving now must let finish
        _write(f"finished {item}")
