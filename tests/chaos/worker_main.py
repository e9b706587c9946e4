"""One chaos worker process: a redbatch Worker whose handler records every run it makes.

Usage (internal): ``python -m tests.chaos.worker_main CONFIG_JSON RECORD_FILE READY_FILE``

Every line of the record file is one JSON object, written with one ``write`` on an
``O_APPEND`` descriptor before the call it describes returns, so it survives a SIGKILL of
the process (``fsync`` too, when configured, for a crash of the machine):

- ``run``: one handler execution: batch id, key, attempt, items, start and end
  (``time.time()``), pid, and how it ended: ``ok`` (returned), ``raised`` (random failure),
  ``partial`` (raised ``ItemsFailed`` naming the poison items, listed in ``failed``: the
  others are delivered), ``hung`` (slept past the batcher's timeout, then raised).
- ``claim``, ``ack``, ``fail``: what the store answered this worker, with the fencing
  token, so the checker can tell an acknowledged run from a refused (stale) one.

Faults the handler injects are driven by the items (``"f": "poison"`` or ``"hang"``) and by
``fail_p``, the chance that any run raises.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

import redbatch
from redbatch.stores.base import LoopCalls, Store
from redbatch.types import ClaimedBatch, Lease, QueueSpec

GRACE = 20.0


class Recorder:
    """Append JSON lines to a file, one ``write`` each, from any thread."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fsync = fsync
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            os.write(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)


def record_store_answers(store: Store, recorder: Recorder) -> None:
    """Wrap this process's store so that claims and settlements (and their twins on the
    loop, ``LoopCalls``, where the worker uses them) are recorded with tokens.

    The wrappers pass every argument through untouched, so that they keep working when the
    store protocol grows a parameter; they read only the leading ones (spec, lease or leases).
    """
    claim_due, ack, fail = store.claim_due, store.ack, store.fail
    attempts: dict[tuple[str, int], int] = {}
    pid = os.getpid()

    def settled(kind: str, lease: Lease, ok: bool | None, **extra: Any) -> None:
        attempt = attempts.pop((lease.batch_id, lease.fencing_token), None)
        recorder.write(
            {"kind": kind, "bid": lease.batch_id, "key": lease.key, "token": lease.fencing_token}
            | {"attempt": attempt, "ok": ok, "t": time.time(), "pid": pid}
            | extra
        )

    def claimed(batches: list[ClaimedBatch]) -> list[ClaimedBatch]:
        for batch in batches:
            lease = batch.lease
            attempts[(lease.batch_id, lease.fencing_token)] = batch.attempt
            recorder.write(
                {"kind": "claim", "bid": lease.batch_id, "key": lease.key, "token": lease.fencing_token}
                | {"attempt": batch.attempt, "t": time.time(), "pid": pid}
            )
        return batches

    def recorded_claim(*args: Any) -> list[ClaimedBatch]:
        return claimed(claim_due(*args))

    def recorded_settle(kind: str, settle: Callable[..., Any]) -> Callable[..., Any]:
        """Record each lease's answer; ``ack`` takes a list of leases (group commit), ``fail`` one."""

        def recorded(spec: QueueSpec, lease_or_leases: Lease | Sequence[Lease], *args: Any) -> Any:
            try:
                answer = settle(spec, lease_or_leases, *args)
            except Exception as exc:
                answered(kind, lease_or_leases, None, exc)
                raise
            return answered(kind, lease_or_leases, answer, None)

        return recorded

    def answered(
        kind: str, lease_or_leases: Lease | Sequence[Lease], answer: Any, exc: Exception | None
    ) -> Any:
        single = isinstance(lease_or_leases, Lease)
        leases = [lease_or_leases] if single else list(lease_or_leases)
        if exc is not None:
            for lease in leases:
                settled(kind, lease, None, error=type(exc).__name__)
            return None
        for lease, ok in zip(leases, [answer] if single else answer, strict=True):
            settled(kind, lease, bool(ok))
        return answer

    async def recorded_claim_async(*args: Any) -> list[ClaimedBatch]:
        return claimed(await claim_due_async(*args))

    async def recorded_ack_async(spec: QueueSpec, leases: Sequence[Lease], *args: Any) -> Any:
        try:
            answer = await ack_async(spec, leases, *args)
        except Exception as exc:
            answered("ack", leases, None, exc)
            raise
        return answered("ack", leases, answer, None)

    if isinstance(store, LoopCalls):  # the worker claims and acknowledges on its loop
        claim_due_async, ack_async = store.claim_due_async, store.ack_async
        store.claim_due_async = recorded_claim_async  # type: ignore[method-assign]
        store.ack_async = recorded_ack_async  # type: ignore[method-assign]

    # Instance attributes shadow the methods: the Worker still sees the same store object.
    store.claim_due = recorded_claim  # type: ignore[method-assign]
    store.ack = recorded_settle("ack", ack)  # type: ignore[method-assign]
    store.fail = recorded_settle("fail", fail)  # type: ignore[method-assign]


class HandlerFault(RuntimeError):
    """Raised on purpose by the chaos handler."""


def make_handler(config: dict[str, Any], recorder: Recorder) -> Callable[[redbatch.Batch], None]:
    rng = random.Random(f"{config['seed']}-{os.getpid()}")
    fail_p, hang_seconds = float(config["fail_p"]), float(config["hang_seconds"])
    work_low, work_high = (ms / 1000 for ms in config["work_ms"])
    pid = os.getpid()

    def handle(batch: redbatch.Batch) -> None:
        start = time.time()
        tags = {item.get("f") for item in batch.items if isinstance(item, dict)}
        result = "ok"
        failed: list[int] = []
        try:
            if "poison" in tags:  # fail only the poison items: the others are done
                failed = [i for i, item in enumerate(batch.items) if item.get("f") == "poison"]
                result = "partial"
                raise redbatch.ItemsFailed(failed, "poison item")
            if "hang" in tags and batch.attempt == 1:
                result = "hung"
                time.sleep(hang_seconds)  # the fault itself: a handler stuck past its timeout
                # Should the timeout not have fired (a SIGSTOP spans it), still no success.
                raise HandlerFault("hung past the timeout")
            if rng.random() < fail_p:
                result = "raised"
                raise HandlerFault("random handler failure")
            time.sleep(rng.uniform(work_low, work_high))  # simulated work, so runs have a length
        finally:
            recorder.write(
                {"kind": "run", "bid": batch.id, "key": batch.key, "attempt": batch.attempt}
                | {"items": batch.items, "start": start, "end": time.time(), "pid": pid}
                | {"result": result, "failed": failed}
            )

    return handle


def watchdog(worker: redbatch.Worker, deadline: float, parent: int) -> None:
    """Stop the worker at the hard deadline or when the harness is gone; exit if it hangs."""
    stop = threading.Event()
    while not stop.wait(1.0):
        if time.time() > deadline or os.getppid() != parent:
            logging.getLogger("chaos").warning("hard deadline or orphaned: stopping")
            worker.stop()
            if not stop.wait(GRACE):
                os._exit(3)


def announce_ready(worker: redbatch.Worker, ready: Path) -> None:
    if worker.started.wait(60):
        ready.write_text(str(os.getpid()))


def main() -> None:
    config = orjson.loads(sys.argv[1])
    record_path, ready_path = Path(sys.argv[2]), Path(sys.argv[3])
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    recorder = Recorder(record_path, bool(config["fsync"]))
    # check=False: a replacement worker may start while Redis is down; it must keep trying.
    store = redbatch.connect(config["url"], check=False, **config["store_options"])
    record_store_answers(store, recorder)
    batcher = redbatch.Batcher(store, config["name"], **config["batcher"])
    batcher.handler(make_handler(config, recorder))
    worker = redbatch.Worker(store, [batcher], concurrency=int(config["concurrency"]))
    parent = os.getppid()
    threading.Thread(target=announce_ready, args=(worker, ready_path), daemon=True).start()
    threading.Thread(target=watchdog, args=(worker, float(config["deadline"]), parent), daemon=True).start()
    worker.run()


if __name__ == "__main__":
    main()
