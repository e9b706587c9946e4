"""Where redbatch spends its time in the figures it misses: ``python -m benchmarks.profiling``.

    python -m benchmarks.profiling add        # Batcher.add loop, one connection
    python -m benchmarks.profiling add_many   # Batcher.add_many, 1,000 items over 100 keys
    python -m benchmarks.profiling worker     # one worker process under figure 4's load

``add``/``add_many`` run a producer under ``py-spy record --idle`` (wall clock, so waiting
for Redis shows as ``recv``; Redis' own time per EVALSHA is printed too); ``worker``
attaches ``py-spy record --gil --nonblocking`` to a worker process (what holds the GIL is
what one process can do at most; the sample count against the window says how busy it
was). Each prints the hottest functions by self and by inclusive samples, as
``file:function``. ``--store sqlite`` profiles the SQLite
store instead. Needs py-spy (``pip install py-spy``) and ptrace permission.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import redis

from benchmarks.config import FULL
from benchmarks.context import Context
from benchmarks.figures import lateness
from benchmarks.figures.common import start_redbatch_workers
from benchmarks.items import keyed_items
from benchmarks.procs import ROOT, Children, child_env
from benchmarks.redis_server import RedisServer
from benchmarks.subjects import REDBATCH_REDIS, REDBATCH_SQLITE, AdderSpec, StoreTarget, make_adder

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


def summarise(raw: Path, top: int = 20, focus: str | None = None) -> str:
    """Self and inclusive sample counts per ``file:function`` from py-spy's raw output,
    counting only stacks that pass through ``focus`` (a ``file:function``) when given."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            names.append(f"{_short(match['file'])}:{match['func']}" if match else frame)
        if focus is not None:
            if focus not in names:
                total -= count
                continue
            names = names[names.index(focus) :]
        if names:
            own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "no samples"
    scope = f" under {focus}" if focus else ""
    lines = [f"{total} samples{scope}", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(path).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return path


# ---------------------------------------------------------------------- producer side


def _produce(url: str, mode: str, items: int) -> None:
    """Body of the profiled producer (``python -m benchmarks.profiling _produce ...``)."""
    subject = REDBATCH_SQLITE if url.startswith("sqlite") else REDBATCH_REDIS
    adder = make_adder(AdderSpec(subject, "", store_url=url, max_wait=60.0))
    assert hasattr(adder, "add_many")
    pairs = keyed_items(0, items, 100, 1000 if mode == "add" else 100)
    server = redis.Redis.from_url(url) if subject == REDBATCH_REDIS else None
    if server is not None:
        server.config_resetstat()
    started = time.perf_counter()
    if mode == "add":
        for key, item in pairs:
            adder.add(key, item)
    else:
        for i in range(0, items, 1000):
            adder.add_many(pairs[i : i + 1000])
    elapsed = time.perf_counter() - started
    calls = items if mode == "add" else -(-items // 1000)
    print(
        f"{mode}: {items / elapsed:,.0f} items/s, {1e6 * elapsed / calls:,.0f} µs per call under the profiler"
    )
    if server is not None:
        stats = server.info("commandstats").get("cmdstat_evalsha", {})
        print(f"Redis-side: {stats.get('usec_per_call', '?')} µs per EVALSHA ({stats.get('calls', 0)} calls)")
        server.close()
    adder.close()


def profile_producer(mode: str, store: str, items: int, out: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="redbatch-profile-") as tmp, RedisServer(Path(tmp)) as server:
        url = server.url(0) if store == "redis" else f"sqlite:///{tmp}/profile.db"
        command = [sys.executable, "-m", "benchmarks.profiling", "_produce", url, mode, str(items)]
        record = [
            _py_spy(),
            "record",
            "--idle",
            "--rate",
            "500",
            "--format",
            "raw",
            "-o",
            str(out),
            "--",
            *command,
        ]
        subprocess.run(record, cwd=ROOT, env=child_env(), check=True, timeout=600)
    return summarise(out, focus="batcher.py:Batcher.add" + ("" if mode == "add" else "_many"))


# ---------------------------------------------------------------------- worker side


def profile_worker(store: str, keys: int, spread: float, out: Path, *, wall: bool = False) -> str:
    """Attach py-spy to one worker while figure 4's load (``keys`` over ``spread`` s) runs."""
    with tempfile.TemporaryDirectory(prefix="redbatch-profile-") as tmp, RedisServer(Path(tmp)) as server:
        workdir = Path(tmp)
        sizes = replace(FULL, late_keys=keys, late_spread=spread, runs=1)
        subject = REDBATCH_SQLITE if store == "sqlite" else REDBATCH_REDIS
        target = StoreTarget(subject, redis_url=server.url(0), workdir=workdir)
        ctx = Context(sizes, server, workdir, [target], verbose=False)
        url = target.fresh()
        with Children() as children:
            (worker,) = start_redbatch_workers(
                children, ctx, url, 1, record="lateness", max_items=lateness.NEVER, max_wait=sizes.max_wait
            )
            duration = int(spread + sizes.max_wait + 2)
            mode = "--idle" if wall else "--gil"
            record = [
                _py_spy(), "record", mode, "--nonblocking", "--rate", "500", "--format", "raw",
                "-o", str(out), "--pid", str(worker.pid), "--duration", str(duration),
            ]  # fmt: skip
            spy = subprocess.Popen(record, stdout=subprocess.DEVNULL)
            try:
                time.sleep(1.0)  # py-spy attaches
                adder = make_adder(
                    AdderSpec(subject, "", store_url=url, max_items=lateness.NEVER, max_wait=sizes.max_wait)
                )
                producer = threading.Thread(target=lateness.spread_arrivals, args=(ctx, adder.add_many))
                producer.start()
                producer.join(timeout=spread + 60)
                spy.wait(timeout=duration + 60)
            finally:
                if spy.poll() is None:
                    spy.terminate()
                    spy.wait(timeout=30)
            ledger = ctx.ledger()
            late = sorted(ledger.lateness())
            if late:
                p99 = late[min(len(late) - 1, int(len(late) * 0.99))] * 1000
                print(
                    f"worker: {len(late):,} items, p99 lateness {p99:.0f} ms under the profiler",
                    file=sys.stderr,
                )
            ledger.close()
    return summarise(out)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_produce":
        _produce(argv[1], argv[2], int(argv[3]))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("what", choices=("add", "add_many", "worker"))
    parser.add_argument("--store", choices=("redis", "sqlite"), default="redis")
    parser.add_argument("--items", type=int, default=20_000, help="items added (add, add_many)")
    parser.add_argument("--keys", type=int, default=10_000, help="keys (worker)")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds of arrivals (worker)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--wall", action="store_true", help="worker: every thread's wall clock, not GIL holders"
    )
    parser.add_argument("-o", "--out", type=Path, help="keep py-spy's raw output here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "profile.raw"
        if args.what == "worker":
            print(profile_worker(args.store, args.keys, args.spread, out, wall=args.wall))
        else:
            print(profile_producer(args.what, args.store, args.items, out))


if __name__ == "__main__":
    main()
