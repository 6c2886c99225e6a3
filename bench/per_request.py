"""What the in-process benches of one request's work share: interleaved timed runs of each
case (a slow moment of the machine hits every case alike), the fastest and the median, a
Markdown table against the base case, and the command line (``-n``, ``--repeat``,
``--quick``, ``--json``)."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

Results = dict[str, dict[str, float]]
Timer = Callable[[int], float]  # seconds for n requests


def measure(timers: Mapping[str, Timer], n: int, repeat: int, base: str) -> Results:
    """µs per request of each case: its fastest run, that less the ``base`` case's, the
    median and the slowest."""
    runs: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeat):
        for name, timer in timers.items():
            runs[name].append(timer(n) / n * 1e6)
    fastest = min(runs[base])
    return {
        name: {"us_per_request": round(min(v), 2), vs_key(base): round(min(v) - fastest, 2),
               "median": round(statistics.median(v), 2), "max": round(max(v), 2)}
        for name, v in runs.items()
    }  # fmt: skip


def vs_key(base: str) -> str:
    return f"vs_{base.replace(' ', '_')}_us"


def table(results: Results, first: str, base: str) -> str:
    lines = [f"| {first} | µs per request (fastest run) | vs {base} | median, slowest |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for name, row in results.items():
        lines.append(f"| {name} | {row['us_per_request']:.2f} | {row[vs_key(base)]:+.2f} | "
                     f"{row['median']:.2f}, {row['max']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(
    prog: str,
    doc: str | None,
    measured: Callable[[int, int], Results],
    shown: Callable[[Results], str],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("-n", type=int, default=20_000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="-n 5000 --repeat 3")
    parser.add_argument("--json", type=Path, help="write the results there too")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n, repeat = (5_000, 3) if args.quick else (args.n, args.repeat)
    results = measured(n, repeat)
    print(shown(results))
    if args.json:
        args.json.write_text(json.dumps({"n": n, "repeat": repeat, "results": results},
                                        indent=2) + "\n")  # fmt: skip
    return 0
