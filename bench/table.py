"""One table of benchmark figures: each row a measure, its median, and its ratio to a baseline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One figure: `value` in `unit`, and `ratio` against `baseline` measured in the same run."""

    bench: str
    measure: str
    value: float
    unit: str
    ratio: float | None = None
    baseline: str = ""


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| bench | measure | median | ratio | against |", "|---|---|---|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        value = f"{row.value:,.1f} {row.unit}".strip()
        lines.append(f"| {row.bench} | {row.measure} | {value} | {ratio} | {row.baseline} |")
    return "\n".join(lines) + "\n"
