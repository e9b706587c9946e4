"""Real worker processes on the durable stores: sharing work, and dying with SIGKILL."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import redbatch
from tests.conformance.test_worker import DEADLINE, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def durable(store_kind: str, store_factory: tuple[str, dict[str, str]]) -> tuple[str, str]:
    if store_kind == "memory":
        pytest.skip("memory:// lives in one process")
    url, options = store_factory
    return url, options.get("prefix", "redbatch")


@pytest.fixture
def spawn(durable: tuple[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start worker processes; each one's stderr goes to a file (a pipe nobody reads would
    block a worker that logs a lot), shown by ``wait_for`` as soon as a worker dies."""
    url, prefix = durable
    procs: list[subprocess.Popen[bytes]] = []

    def start(record: str, *extra: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "tests.proc_worker", url, prefix, str(tmp_path / record), *extra]
        with open(tmp_path / f"{record}.stderr", "wb") as stderr:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def wait_for(predicate: Callable[[], bool], tmp_path: Path, *expected_alive: subprocess.Popen[bytes]) -> None:
    """``wait_until``, failing at once with its stderr when a worker that should run died."""

    def done() -> bool:
        for proc in expected_alive:
            if proc.poll() is not None:
                record = Path(proc.args[5]).name  # type: ignore[index]  # args as given: a list
                stderr = (tmp_path / f"{record}.stderr").read_text(errors="replace")
                pytest.fail(f"worker {record} exited with {proc.returncode}:\n{stderr[-4000:]}")
        return predicate()

    wait_until(done)


def records(tmp_path: Path) -> list[dict[str, Any]]:
    lines = []
    for path in tmp_path.glob("*.jsonl"):
        lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return lines


def batcher(durable: tuple[str, str]) -> redbatch.Batcher:
    url, prefix = durable
    store = redbatch.connect(url, **({"prefix": prefix} if url.startswith("redis") else {}))
    return redbatch.Batcher(store, "procs", max_items=25, max_wait=0.05, lease=1.0)


def delivered(tmp_path: Path) -> Counter[int]:
    return Counter(i for r in records(tmp_path) if r["event"] == "end" for i in r["items"])


def test_several_worker_processes_share_the_work_once(
    durable: tuple[str, str], spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    workers = [spawn(f"w{i}.jsonl") for i in range(2)]
    wait_for(lambda: sum(r["event"] == "ready" for r in records(tmp_path)) == 2, tmp_path, *workers)
    b = batcher(durable)
    total = 1500
    for start in range(0, total, 100):
        b.add_many([(f"key-{n % 60}", n) for n in range(start, start + 100)])
    wait_for(lambda: sum(delivered(tmp_path).values()) >= total, tmp_path, *workers)
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        assert proc.wait(DEADLINE) == 0
    counts = delivered(tmp_path)
    assert set(counts) == set(range(total)) and set(counts.values()) == {1}
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    starts = {r["id"]: r["t"] for r in records(tmp_path) if r["event"] == "start"}
    for r in records(tmp_path):
        if r["event"] == "end":
            spans[r["key"]].append((starts[r["id"]], r["t"]))
    for key_spans in spans.values():  # one batch per key at a time, across processes
        key_spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(key_spans))
    assert len({r["pid"] for r in records(tmp_path) if r["event"] == "end"}) == 2  # both took part
    b.store.close()


def test_a_killed_workers_batch_is_delivered_by_another_with_the_same_id(
    durable: tuple[str, str], spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    victim = spawn("victim.jsonl", "--block-key", "doomed")
    wait_for(lambda: any(r["event"] == "ready" for r in records(tmp_path)), tmp_path, victim)
    b = batcher(durable)
    b.add_many([("doomed", n) for n in range(5)])
    wait_for(lambda: any(r.get("key") == "doomed" for r in records(tmp_path)), tmp_path, victim)
    b.add("doomed", "arrived mid-batch")
    victim.kill()  # SIGKILL: no cleanup, no acknowledgement
    assert victim.wait(DEADLINE) == -signal.SIGKILL
    killed_at = time.monotonic()
    rescuer = spawn("rescuer.jsonl")
    wait_for(lambda: sum(1 for r in records(tmp_path) if r["event"] == "end") >= 2, tmp_path, rescuer)
    recovery = time.monotonic() - killed_at
    (started,) = [r for r in records(tmp_path) if r["pid"] == victim.pid and r["event"] == "start"]
    ends = [r for r in records(tmp_path) if r["event"] == "end"]
    assert [(r["id"], r["attempt"], r["items"]) for r in ends[:1]] == [(started["id"], 2, [0, 1, 2, 3, 4])]
    assert ends[1]["items"] == ["arrived mid-batch"] and ends[1]["id"] != started["id"]
    assert recovery < DEADLINE
    wait_until(lambda: b.stats().flushed_batches == 2)  # acknowledged after the handler returned
    stats = b.stats()
    assert (stats.in_flight, stats.buffered_items) == (0, 0)
    b.store.close()


def returned_adds(folder: Path, threads: int) -> dict[int, list[int]]:
    """What each producer thread recorded as returned; whole lines only (a kill may cut one)."""
    found = {}
    for t in range(threads):
        path = folder / f"returned-{t}"
        text = path.read_bytes() if path.exists() else b""
        found[t] = [int(line) for line in text.split(b"\n")[:-1]]
    return found


def kill_producer_mid_run(
    url: str, prefix: str, folder: Path, name: str, threads: int, *, coroutines: bool = False
) -> None:
    """Start a producer of ``threads`` threads (or coroutines) adding to batcher ``name``;
    SIGKILL it once every thread has had adds return, 1,000 in all."""
    folder.mkdir()
    args = [sys.executable, "-m", "tests.proc_producer", url, prefix, str(folder)]
    args += ["--threads", str(threads), "--name", name] + (["--asyncio"] if coroutines else [])
    with open(folder / "stderr", "wb") as stderr:
        producer = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:

        def enough() -> bool:
            if producer.poll() is not None:
                pytest.fail(f"the producer exited: {(folder / 'stderr').read_text()[-4000:]}")
            counts = returned_adds(folder, threads)
            return sum(map(len, counts.values())) >= 1_000 and all(counts.values())

        wait_until(enough)
        producer.kill()  # SIGKILL mid-run: a call on its way, threads waiting for it
        assert producer.wait(DEADLINE) == -signal.SIGKILL
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(DEADLINE)


@pytest.mark.parametrize("producer", ["threads", "coroutines"])
def test_coalesced_adds_that_returned_survive_a_killed_producer(
    durable: tuple[str, str], tmp_path: Path, producer: str
) -> None:
    """16 threads (or coroutines, with add_async) of one producer add at once, sharing store
    calls; SIGKILL mid-run loses none of the adds that returned, and stores none twice.
    Three rounds: three moments."""
    url, prefix = durable
    threads = 16
    store = redbatch.connect(url, **({"prefix": prefix} if url.startswith("redis") else {}))
    try:
        for round_ in range(3):
            name = f"producers-{round_}"
            folder = tmp_path / name
            kill_producer_mid_run(url, prefix, folder, name, threads, coroutines=producer == "coroutines")
            b = redbatch.Batcher(store, name, max_items=1_000_000, max_wait=3600)
            for t, promised in returned_adds(folder, threads).items():
                stored = [p.value for p in b.peek(f"t{t}", limit=1_000_000)]
                assert all(thread == t for thread, _ in stored)
                numbers = [n for _, n in stored]
                assert numbers == sorted(set(numbers)), "stored twice, or out of order"
                assert set(promised) <= set(numbers), f"{name}, thread {t}: returned but lost"
                # At most the add a thread had on its way when killed is stored unrecorded.
                assert len(numbers) - len(promised) <= 1
    finally:
        store.close()
