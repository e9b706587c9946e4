"""The README's quick start and the examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from examples import chat_replies, profile_recompute

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README has no quick start block"
    return match.group(1)


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environment.pop("REDBATCH_URL", None)
    environment.update(env)
    return subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("redbatch.stores.sqlite")
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart())
    result = run([sys.executable, str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "agent-0: 10 items" in result.stdout and "agent-1: 10 items" in result.stdout
    assert "buffered_items=0" in result.stdout
    assert (tmp_path / "redbatch.db").exists()  # the default store, in the working folder


def test_chat_replies_story(tmp_path: Path) -> None:
    replies = chat_replies.main("memory://")
    assert replies[0] == ("chat-1", ["hi", "are you there?"])
    assert ("chat-1", ["also, one more thing"]) in replies  # arrived mid-reply: next batch
    assert ("chat-2", ["hello, new persona"]) in replies  # cleared before the switch


def test_profile_recompute_story_dedupes_and_persists(tmp_path: Path) -> None:
    pytest.importorskip("redbatch.stores.sqlite")
    url = f"sqlite:///{tmp_path / 'profiles.db'}"
    assert profile_recompute.main(url) == [7, 3, 11]
    result = run([sys.executable, "-c", "import redbatch; print(redbatch.Batcher(redbatch.connect("
                 f"'{url}'), 'profiles').stats().last_flush_at)"], tmp_path)  # fmt: skip
    assert result.returncode == 0 and float(result.stdout) > 0  # survived the process


def test_feedback_story_runs_two_worker_processes(tmp_path: Path) -> None:
    pytest.importorskip("redbatch.stores.sqlite")
    url = f"sqlite:///{tmp_path / 'redbatch.db'}"
    result = run(
        [sys.executable, str(ROOT / "examples" / "feedback_pods.py")],
        tmp_path,
        REDBATCH_URL=url,
        FEEDBACK_SINK=str(tmp_path / "sink.db"),
    )
    assert result.returncode == 0, result.stderr
    assert "70 feedback rows written by 2 pods" in result.stdout
