"""Every benchmark in one run: `.venv/bin/python -m bench [--quick] [--out FILE]`.

Prints one table and writes it (Markdown, with the machine and the date) to `bench/results.md`.
Each figure is a median over repeated runs, and each ratio is against a baseline measured in the
same run: see each module's docstring for what is timed. Needs Debian's `wrk` for the submit
figures; set `BENCH_POSTGRES_URL` to add PostgreSQL to them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from bench import answers, cases, chat, ears, first_audio, overhead, stages, submit, system_prompt
from bench.table import Row, markdown

OUT = Path(__file__).resolve().parent / "results.md"


def _machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rounds = 2 if args.quick else 5
    runs: list[Callable[[], list[Row]]] = [
        lambda: stages.rows(rounds),
        lambda: ears.rows(questions=2 if args.quick else 5),
        lambda: cases.rows(rounds),
        lambda: first_audio.rows(rounds),
        lambda: system_prompt.rows(rounds),
        lambda: submit.rows(rounds=2 if args.quick else 3, seconds=5 if args.quick else 10),
        lambda: overhead.rows(jobs=40 if args.quick else 200),
        lambda: chat.rows(rounds=3 if args.quick else 7),
        answers.rows,
    ]
    table: list[Row] = []
    for run in runs:
        table += run()
    text = markdown(table)
    header = f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {_machine()}.\n\n"
    # The sections under the table (## …) hold single modules' detailed runs: kept as they are.
    old = args.out.read_text() if args.out.exists() else ""
    sections = old[old.find("\n## ") :] if "\n## " in old else ""
    args.out.write_text(header + text + sections)
    print(header + text)


if __name__ == "__main__":
    main()
