"""What the figures were measured on: machine, load, and the versions of everything involved."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.redis_server import redis_server_binary


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or done.stderr.strip() or "unknown"


def _redis_server_version() -> str:
    text = _command_output([redis_server_binary(), "--version"])
    for word in text.split():
        if word.startswith("v="):
            return word[2:]
    return text


def _git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    revision = _command_output(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(root), "status", "--porcelain", "--", "src"])
    return revision + (" (src modified)" if dirty and dirty != "unknown" else "")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def describe() -> dict[str, Any]:
    """The environment block printed above the table and stored in the JSON results."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": _redis_server_version(),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "redbatch": f"{_version('redbatch')} @ {_git_revision()}",
        "celery": _version("celery"),
        "celery_batches": _version("celery-batches"),
        "load_average_at_start": load_average(),
    }
