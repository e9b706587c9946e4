"""``python -m benchmarks.cluster [--runs 3] [--workers 1 2 4] [--quick]``: the Redis Cluster
figures, from the harness' own figure code (figures 3 and 5), without the baselines.

- End-to-end items/s (figure 3's case: items pre-loaded in full keys, then N worker
  processes drain them to a no-op handler) on one Redis and on a 3-master cluster, with 1,
  2 and 4 worker processes, the two subjects alternating within each run so that both see
  the same load on a shared machine.
- Due-work lookup per call (figure 5) at 1k, 100k and 1M open keys on the cluster
  (``python -m benchmarks --only due`` gives one Redis).

The cluster is the tests' ``RedisClusterGroup`` (no persistence, no replicas, 16 partitions
per batcher); one Redis is the harness' own server, which also keeps the ledger. The load
average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from benchmarks.__main__ import cluster_target
from benchmarks.config import sizes_for
from benchmarks.context import Context
from benchmarks.figures import due_work, end_to_end
from benchmarks.redis_server import RedisServer
from benchmarks.subjects import REDBATCH_REDIS, StoreTarget


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min), {five:.2f} (5 min)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="small sizes: proves the script runs")
    parser.add_argument("--skip-due", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args(argv)
    sizes = replace(sizes_for(args.quick, args.runs), e2e_workers=tuple(args.workers))
    with tempfile.TemporaryDirectory(prefix="redbatch-cluster-") as tmp:
        workdir = Path(tmp)
        with RedisServer(workdir) as server, cluster_target(workdir, True) as cluster:
            assert cluster is not None
            single = StoreTarget(REDBATCH_REDIS, redis_url=server.url(0))
            ctx = Context(sizes=sizes, server=server, workdir=workdir, stores=[single, cluster])
            if not args.skip_e2e:
                e2e(ctx, single, cluster, args.workers, args.runs)
            if not args.skip_due:
                print(f"\nfinding due work on the cluster ({load()} at start)", flush=True)
                rows = due_work._redbatch(ctx, cluster)
                print("| case | µs per call | notes |\n|---|---|---|")
                for m in rows:
                    value = "—" if m.value is None else f"{m.value:,.0f}"
                    print(f"| {m.case} | {value} | {m.note or m.skipped} |")
                print(f"({load()} at end)")
    return 0


def e2e(ctx: Context, single: StoreTarget, cluster: StoreTarget, workers: list[int], runs: int) -> None:
    print(f"end-to-end, {ctx.sizes.e2e_items:,} items in full keys of {ctx.sizes.batch_size}", flush=True)
    print("| worker processes | one Redis items/s | cluster items/s | cluster / one Redis | load (1 min) |")
    print("|---|---|---|---|---|")
    for n in workers:
        rates: dict[str, list[float]] = {single.subject: [], cluster.subject: []}
        loads = []
        for _ in range(runs):
            for target in (single, cluster):
                rate, _ = end_to_end._redbatch_once(ctx, target, n)
                rates[target.subject].append(rate)
            loads.append(os.getloadavg()[0])
        a, b = (statistics.median(rates[t.subject]) for t in (single, cluster))
        ratios = [c / s for s, c in zip(rates[single.subject], rates[cluster.subject], strict=True)]
        print(f"| {n} | {a:,.0f} | {b:,.0f} | {statistics.median(ratios):.2f}x (per run: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}) | {', '.join(f'{x:.1f}' for x in loads)} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
