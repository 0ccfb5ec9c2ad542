"""One table of benchmark figures: each row a measure, its median, and its ratio to a baseline."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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


def run_rounds(doc: str, rows: Callable[[int], list[Row]]) -> None:
    """The command line of a bench that takes only `--rounds`: prints its table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    print(markdown(rows(parser.parse_args().rounds)))
