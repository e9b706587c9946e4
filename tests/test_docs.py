"""The API reference: every public name is on its page, and the site builds strictly."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import redbatch
import redbatch.errors

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"


def documented() -> set[str]:
    """The objects reference.md renders: the target of each ``::: target`` line."""
    return set(re.findall(r"^:::\s+(\S+)\s*$", REFERENCE.read_text(), re.M))


@pytest.mark.parametrize("name", redbatch.__all__)
def test_every_public_name_is_in_the_reference(name: str) -> None:
    targets = documented()
    if f"redbatch.{name}" in targets:
        return
    # The errors are rendered with their module, whose docstring draws the tree.
    in_errors = getattr(redbatch.errors, name, None) is getattr(redbatch, name)
    assert in_errors and "redbatch.errors" in targets, (
        f"redbatch.{name} is in redbatch.__all__ but not in docs/reference.md: "
        f"add a '::: redbatch.{name}' line"
    )


def test_the_reference_builds_strictly_with_parameter_tables(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "mkdocstrings_handlers.python") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]' to build the reference")
    site = tmp_path / "site"  # not .site: a test never overwrites a developer's build
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    page = (site / "reference" / "index.html").read_text()
    # The docstrings' Args blocks render as tables: one of Batcher's, with a parameter in it.
    batcher = page[page.index('id="redbatch.Batcher"') : page.index('id="redbatch.Batcher.open"')]
    assert 'doc-section-title">Parameters:' in batcher
    assert "<code>max_wait</code>" in batcher
