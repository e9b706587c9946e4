"""Smoke test of ``python -m benchmarks.jobs``: the harness runs end to end on one peer (RQ)
and on redbatch's slot with tiny counts, so it cannot rot. Timings are not checked.

Runs only where the bench extra is installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from benchmarks import jobs

BENCH_PEERS = ("saq", "streaq", "rq")
"""The peers the bench extra installs (arq is installed apart: benchmarks/README.md)."""
MISSING = [name for name in BENCH_PEERS if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"the bench extra is not installed (missing {', '.join(MISSING)}): pip install -e '.[bench]'",
)


def test_jobs_benchmark_runs_a_peer_and_the_redbatch_slot(tmp_path: Path) -> None:
    args = ["--quick", "--only", "rq", "--only", "redbatch", "--jobs", "60"]
    args += ["--latency-jobs", "10", "--latency-rate", "50", "--quiet", "--out", str(tmp_path)]
    assert jobs.main(args) == 0

    data = json.loads((tmp_path / "jobs-quick.json").read_text())
    rows = {row["subject"]: row for row in data["subjects"]}
    assert set(rows) == {"RQ", "redbatch"}
    rq = rows["RQ"]
    assert not rq["unavailable"] and rq["errors"] == 0
    for metric in jobs.METRICS:
        assert rq["metrics"][metric]["value"] > 0, metric
    ours = rows["redbatch"]
    if ours["unavailable"]:  # until redbatch.Jobs lands (issue 8)
        assert ours["unavailable"].startswith("not available")
        assert data["ratios"]["processed_1"] is None
    else:
        assert ours["errors"] == 0
        assert all(ours["metrics"][m]["value"] > 0 for m in jobs.METRICS)
        assert data["ratios"]["processed_1"]["best_peer"] == "RQ"
    table = (tmp_path / "jobs-quick.md").read_text()
    assert "| RQ " in table
    assert "redbatch ÷ best peer" in table
