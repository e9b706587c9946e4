"""``python -m benchmarks [--quick] [--only NAME] [--runs N] [--with-cluster] [--workers N ...]``:
run the figures, print one table with the targets checked in the same run, and write
``benchmarks/results/latest.{json,md}``
(``latest-quick.*`` for ``--quick``, ``latest-partial.*`` for ``--only``: only a complete
full run replaces the published table)."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType

from benchmarks import env
from benchmarks.config import sizes_for
from benchmarks.context import Context
from benchmarks.figures import NAMES, runner
from benchmarks.redis_server import RedisServer
from benchmarks.results import Measurement, print_tables, write
from benchmarks.subjects import REDBATCH_CLUSTER, StoreTarget, store_targets
from benchmarks.targets import check

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (CI smoke pass)")
    parser.add_argument(
        "--only", action="append", choices=list(NAMES), metavar="NAME",
        help=f"run only this figure (repeatable): {', '.join(NAMES)}",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, help="repetitions per measurement (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.{json,md} go")
    parser.add_argument("--no-write", action="store_true", help="print only, write no result files")
    parser.add_argument(
        "--with-memory-store", action="store_true",
        help="also measure redbatch's in-process memory store where it applies (harness debugging)",
    )  # fmt: skip
    parser.add_argument(
        "--with-cluster", action="store_true",
        help="also measure redbatch on a 3-master Redis Cluster (started here) where figures take subjects",
    )  # fmt: skip
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        metavar="N",
        help="worker processes of the end-to-end figure (default 1 2)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def cluster_target(workdir: Path, wanted: bool) -> Iterator[StoreTarget | None]:
    """With ``wanted``, a 3-master Redis Cluster (the tests' ``RedisClusterGroup``: real
    redis-servers on loopback ports, no persistence, no replicas) as a subject; stopped on
    the way out."""
    if not wanted:
        yield None
        return
    from tests.servers import RedisClusterGroup  # noqa: PLC0415 - the tests' fixture, only when asked

    (workdir / "cluster").mkdir()
    group = RedisClusterGroup(workdir / "cluster").start()
    try:
        assert group.servers is not None
        yield StoreTarget(
            REDBATCH_CLUSTER, redis_url=group.url(), node_urls=tuple(s.url for s in group.servers)
        )
    finally:
        group.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = sizes_for(args.quick, args.runs)
    if args.workers:
        sizes = replace(sizes, e2e_workers=tuple(args.workers))
    mode = ("quick" if args.quick else "full") + f", {sizes.runs} run(s) per measurement, median shown"
    names = args.only or list(NAMES)
    environment = env.describe()
    measurements: list[Measurement] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="redbatch-bench-") as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir) as server, cluster_target(workdir, args.with_cluster) as cluster:
            stores = store_targets(server.url(0), workdir, with_memory=args.with_memory_store)
            ctx = Context(
                sizes=sizes,
                server=server,
                workdir=workdir,
                stores=stores + ([cluster] if cluster else []),
                verbose=not args.quiet,
            )
            for name in names:
                started = time.monotonic()
                try:
                    measurements += runner(name)(ctx)
                except Exception:
                    failures.append(name)
                    ctx.log(f"figure {name!r} failed:\n{traceback.format_exc()}")
                ctx.log(f"{name}: {time.monotonic() - started:.1f}s")
    environment["load_average_at_end"] = env.load_average()
    targets = check(measurements, sizes)
    print_tables(environment, measurements, targets, mode)
    if not args.no_write:
        stem = "latest-quick" if args.quick else "latest-partial" if args.only else "latest"
        json_path, md_path = write(args.out, environment, measurements, targets, mode, stem)
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    if failures:
        print(f"figures that failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
