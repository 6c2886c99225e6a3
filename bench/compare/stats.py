"""Pure numbers: percentiles, medians with their spread, costs, and the target verdicts.

A ``Results`` value is plain JSON: ``results[workload][scenario]`` is
``{"runs": [sample, ...], "errors": [message, ...]}`` where a sample is a
dict of floats. Every ratio is between two scenarios of the same results,
that is of the same run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

Results = dict[str, dict[str, dict[str, Any]]]


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (p50 of [1, 2, 3, 4] is 2)."""
    if not sorted_values:
        raise ValueError("percentile of nothing")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def summarize(results: Results, workload: str, scenario: str, key: str) -> Summary | None:
    """Median, min and max of ``key`` over the runs of one workload on one scenario."""
    runs = results.get(workload, {}).get(scenario, {}).get("runs", [])
    values = [run[key] for run in runs if key in run]
    if not values:
        return None
    return Summary(statistics.median(values), min(values), max(values), len(values))


def median(results: Results, workload: str, scenario: str, key: str) -> float | None:
    found = summarize(results, workload, scenario, key)
    return found.median if found else None


def ratio(results: Results, workload: str, key: str, scenario: str, base: str) -> float | None:
    """Median of ``scenario`` over median of ``base``, both from these results."""
    top, bottom = median(results, workload, scenario, key), median(results, workload, base, key)
    if top is None or not bottom:
        return None
    return top / bottom


def cost_per_run(results: Results, workload: str, scenario: str, unit: str) -> list[float]:
    """Proxy CPU seconds per GB (``unit="gb"``) or per 10k requests (``"10k"``) of each run."""
    out: list[float] = []
    for run in results.get(workload, {}).get(scenario, {}).get("runs", []):
        if "cpu_s" not in run:
            continue
        amount = run.get("bytes", 0.0) / 1e9 if unit == "gb" else run.get("requests", 0.0) / 1e4
        if amount > 0:
            out.append(run["cpu_s"] / amount)
    return out


def median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- targets --------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: could not be measured in this run

    @property
    def word(self) -> str:
        return {True: "met", False: "missed", None: "not measured"}[self.met]


def _ratio_verdict(
    results: Results, label: str, workload: str, key: str, base: str, at_least: float
) -> Verdict:
    value = ratio(results, workload, key, "ambit", base)
    if value is None:
        return Verdict(label, "n/a", None)
    return Verdict(label, f"{value:.2f}x {base}", value >= at_least)


def verdicts(results: Results, idle: dict[str, Any]) -> list[Verdict]:
    """ambit L4 against each target of the issue, from this run's numbers only."""
    out = [
        _ratio_verdict(results, "throughput, 1 stream >= 1.0x stunnel", "throughput_1", "gbps",
                       "stunnel", 1.0),
        _ratio_verdict(results, "throughput, 8 streams >= 1.0x stunnel", "throughput_8", "gbps",
                       "stunnel", 1.0),
    ]  # fmt: skip
    for pct, limit in (("50", 0.3), ("99", 1.0)):
        mesh = median(results, "latency_1000", "ambit", f"p{pct}_ms")
        base = median(results, "latency_1000", "direct", f"p{pct}_ms")
        label = f"added p{pct} at 1,000 req/s <= +{limit} ms"
        if mesh is None or base is None:
            out.append(Verdict(label, "n/a", None))
        else:
            added = mesh - base
            out.append(Verdict(label, f"{added:+.2f} ms", added <= limit))
    out.append(_ratio_verdict(results, "max request rate >= 0.5x stunnel", "max_rate", "rps",
                              "stunnel", 0.5))  # fmt: skip
    churn = median(results, "churn", "ambit", "conn_per_s")
    out.append(
        Verdict("churn >= 1,000 new connections/s", "n/a", None)
        if churn is None
        else Verdict("churn >= 1,000 new connections/s", f"{churn:,.0f}/s", churn >= 1000)
    )
    level = idle.get("ambit", {}).get("1000")
    if not level or not level.get("rss_mb"):
        out.append(Verdict("ztunnel RSS <= 60 MB with 1,000 open connections", "n/a", None))
    else:
        rss = max(level["rss_mb"].values())
        out.append(
            Verdict("ztunnel RSS <= 60 MB with 1,000 open connections", f"{rss:.1f} MB", rss <= 60)
        )
    return out
