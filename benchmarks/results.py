"""Measurements, targets, and their three renderings: a rich table, markdown, JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.stats import median


@dataclass
class Measurement:
    """One cell of the table: a subject's median over ``runs`` for one figure and case."""

    figure: str
    case: str
    subject: str
    unit: str
    runs: list[float] = field(default_factory=list)
    note: str = ""
    skipped: str = ""
    """Why there is no value (a subject that does not apply, a missing store)."""
    param: int | None = None
    """The figure's variable where it has one (open keys in figure 5)."""

    @property
    def invalid(self) -> bool:
        """Measured while redbatch's workers logged errors (see ``flag_errors``)."""
        return self.note.startswith("INVALID")

    @property
    def value(self) -> float | None:
        if self.skipped or not self.runs:
            return None
        return median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = self.value
        return data


@dataclass
class Target:
    """A product target checked against this run's measurements."""

    name: str
    subject: str
    measured: str
    goal: str
    passed: bool | None
    """None when a measurement it needs was not taken (``--only``, a skipped store)."""
    detail: str = ""

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit in ("items/s", "keys/s"):
        return f"{value:,.0f}"
    if unit in ("B/item", "items"):
        return f"{value:,.0f}" if abs(value) >= 10 else f"{value:,.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _runs_text(m: Measurement) -> str:
    if len(m.runs) <= 1:
        return ""
    return "runs: " + ", ".join(format_value(r, m.unit) for r in m.runs)


def _rows(measurements: list[Measurement]) -> list[list[str]]:
    rows = []
    for m in measurements:
        note = m.skipped or "; ".join(x for x in (m.note, _runs_text(m)) if x)
        rows.append([m.figure, m.case, m.subject, format_value(m.value, m.unit), m.unit, note])
    return rows


MEASUREMENT_HEADER = ["figure", "case", "subject", "median", "unit", "notes"]
TARGET_HEADER = ["target", "subject", "measured", "goal", "verdict", "detail"]


def _target_rows(targets: list[Target]) -> list[list[str]]:
    return [[t.name, t.subject, t.measured, t.goal, t.verdict, t.detail] for t in targets]


def _environment_line(env: dict[str, Any]) -> str:
    return (
        f"{env['date']} · {env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB · "
        f"Python {env['python']} · redis-server {env['redis_server']} · redis-py {env['redis_py']} · "
        f"hiredis {env['hiredis']} · celery {env['celery']} · celery-batches {env['celery_batches']} · "
        f"redbatch {env['redbatch']} · load average {env['load_average_at_start']} → "
        f"{env.get('load_average_at_end', '?')}"
    )


def busy_warning(env: dict[str, Any]) -> str:
    """A warning when the machine was busy at the start or the end of the run."""
    cores = max(1, int(env.get("cores") or 1))
    loads = []
    for field_name in ("load_average_at_start", "load_average_at_end"):
        try:
            loads.append(float(str(env.get(field_name, "")).split()[0]))
        except (ValueError, IndexError):
            continue
    if loads and max(loads) > 0.5 * cores:
        return (
            f"WARNING: 1-minute load average up to {max(loads):.2f} on {cores} cores: other work shared "
            "this machine, so these figures are noise; publish only a run on a quiet machine."
        )
    return ""


def print_tables(
    env: dict[str, Any], measurements: list[Measurement], targets: list[Target], mode: str
) -> None:
    """Print the environment, the measurements and the targets with rich."""
    console = Console(width=200)
    console.print(f"[bold]redbatch benchmarks[/] ({mode}) — {_environment_line(env)}")
    if warning := busy_warning(env):
        console.print(f"[bold red]{warning}[/]")
    table = Table(*MEASUREMENT_HEADER, show_lines=False)
    previous = None
    for row in _rows(measurements):
        if previous is not None and row[0] != previous:
            table.add_section()
        previous = row[0]
        table.add_row(*row)
    console.print(table)
    targets_table = Table(*TARGET_HEADER)
    colours = {"PASS": "green", "MISS": "red", "n/a": "dim"}
    for target, row in zip(targets, _target_rows(targets), strict=True):
        row[4] = f"[{colours[target.verdict]}]{row[4]}[/]"
        targets_table.add_row(*row)
    console.print(targets_table)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(env: dict[str, Any], measurements: list[Measurement], targets: list[Target], mode: str) -> str:
    return (
        "\n\n".join(
            [
                f"<!-- generated by `python -m benchmarks` ({mode}); do not edit by hand -->",
                f"Measured {_environment_line(env)}."
                + (f"\n\n**{busy_warning(env)}**" if busy_warning(env) else ""),
                _markdown_table(TARGET_HEADER, _target_rows(targets)),
                _markdown_table(MEASUREMENT_HEADER, _rows(measurements)),
            ]
        )
        + "\n"
    )


def write(
    directory: Path,
    env: dict[str, Any],
    measurements: list[Measurement],
    targets: list[Target],
    mode: str,
    stem: str = "latest",
) -> tuple[Path, Path]:
    """Write ``{stem}.json`` and ``{stem}.md`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "mode": mode,
        "environment": env,
        "warning": busy_warning(env),
        "measurements": [m.as_dict() for m in measurements],
        "targets": [asdict(t) | {"verdict": t.verdict} for t in targets],
    }
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown(env, measurements, targets, mode))
    return json_path, md_path
