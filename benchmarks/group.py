"""The document pipeline's wall time: a group of 1,000 three-step chains on each store.

    python -m benchmarks.group [--docs 1000]

Runs examples/documents.py's story in one process (one worker, concurrency 16): submit the
group, wait until its callback has run, and print the wall time per store (memory, SQLite,
and Redis on a private redis-server), with the load average beside it. Rounds after the
first (the retry of the transient failures) are not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import tempfile
from pathlib import Path

from examples import documents

from benchmarks.redis_server import RedisServer


def timed(url: str, docs: int, workdir: Path) -> float:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        documents.main(url, docs, workdir)
    found = re.search(r"group of \d+ chains: ([0-9.]+) s", out.getvalue())
    if found is None:
        raise RuntimeError(f"the story printed no wall time:\n{out.getvalue()}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        urls = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{Path(tmp) / 'group.db'}",
            "redis": server.url(),
        }
        print(f"| store | group of {args.docs:,} chains (s) | load before |")
        print("|---|---|---|")
        for name, url in urls.items():
            load = os.getloadavg()[0]
            seconds = timed(url, args.docs, Path(tmp) / name)
            print(f"| {name} | {seconds:.2f} | {load:.2f} |", flush=True)


if __name__ == "__main__":
    main()
