"""The job stories as runnable examples: the document pipeline (in one process, and with a
worker process SIGKILLed midway) and the decision process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from examples import decisions, documents

import redbatch
from tests.conformance.test_worker import wait_until

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 120.0


def test_the_document_pipeline_in_one_process(tmp_path: Path) -> None:
    lines = documents.main("memory://", docs=1000, workdir=tmp_path)
    assert [(line["round"], line["succeeded"], len(line["failed"])) for line in lines] == [
        (1, 880, 120),
        (2, 900, 100),
    ]
    assert all(int(doc.split(".")[1]) % 10 == 7 for doc in lines[1]["failed"])


def test_the_decision_process_reports_progress_and_a_result() -> None:
    job = decisions.main("memory://")
    assert job.status == "succeeded" and job.progress == 1.0
    assert job.result["decision"] == "approve" and job.result["case"] == "loan-42"


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"], indirect=True)
def test_a_killed_worker_does_not_break_the_group(
    store_kind: str, store_factory: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, options = store_factory
    store = redbatch.connect(url, **options)
    record = tmp_path / "callbacks.jsonl"
    jobs = documents.pipeline(store, record)
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        args = [sys.executable, "examples/documents.py", "--worker", url, str(record)]
        args += [options["prefix"]] if "prefix" in options else []
        with open(tmp_path / f"worker{len(procs)}.stderr", "wb") as stderr:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return proc

    try:
        group_id = documents.submit(jobs, 1000)
        first = start()
        wait_until(lambda: jobs.progress(group_id).percent >= 20, DEADLINE)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        start()  # reclaims the killed worker's jobs once their 1 s leases lapse
        documents.wait_for_round(jobs, group_id, 1)
        progress = jobs.progress(group_id)
        assert (progress.total, progress.succeeded + progress.failed, progress.pending) == (1000, 1000, 0)
        assert documents.retry_transient(jobs, group_id, record) == len(
            [d for d in range(0, 1000, 50) if d % 10 != 7]
        )
        documents.wait_for_round(jobs, group_id, 2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        store.close()
    lines = [orjson.loads(line) for line in record.read_bytes().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]  # each round's callback exactly once
    assert lines[1]["succeeded"] == 900 and len(lines[1]["failed"]) == 100
