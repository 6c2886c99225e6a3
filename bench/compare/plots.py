"""PNG plots of a run (matplotlib, headless): latency against rate, throughput and rates.

matplotlib is a bench-only dependency; :mod:`bench.compare.run` installs it
with pip when missing and skips the plots (saying so) when it cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.compare import stats
from bench.compare.report import SCENARIOS

COLORS = {"direct": "#444444", "ambit": "#1f77b4", "stunnel": "#d62728", "haproxy": "#2ca02c"}


def plot_all(doc: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    return [latency_vs_rate(doc, out_dir), throughput(doc, out_dir)]


def latency_vs_rate(doc: dict[str, Any], out_dir: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    results = doc["results"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in (s for s in SCENARIOS if s in doc["scenarios"]):
        for pct, style in (("50", "-"), ("99", "--")):
            xs, ys, lo, hi = [], [], [], []
            for rate in doc["rates"]:
                workload = "latency_1000" if rate == 1000 else f"rate_{rate}"
                found = stats.summarize(results, workload, name, f"p{pct}_ms")
                got = stats.median(results, workload, name, "achieved_rps")
                if found is None or got is None:
                    continue
                xs.append(got)  # past the knee the achieved rate stops growing
                ys.append(found.median)
                lo.append(found.median - found.low)
                hi.append(found.high - found.median)
            if xs:
                ax.errorbar(
                    xs, ys, yerr=[lo, hi], fmt=style + "o", color=COLORS[name], markersize=4,
                    capsize=2, label=f"{name} p{pct}",
                )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(doc["rates"])
    ax.set_xticklabels([f"{r:,}" for r in doc["rates"]])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(
        "achieved requests/s, asked "
        + ", ".join(f"{r:,}" for r in doc["rates"])
        + " (HTTP/1.1, 1 KiB, 4 connections, h2load --rps)"
    )
    ax.set_ylabel("latency, ms (median of runs; bars: min-max)")
    ax.set_title("Latency against request rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    name = "latency_vs_rate.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def throughput(doc: dict[str, Any], out_dir: Path) -> str:
    import matplotlib.pyplot as plt

    results = doc["results"]
    names = [s for s in SCENARIOS if s in doc["scenarios"]]
    panels = [
        ("iperf3, 1 stream", "throughput_1", "gbps", "Gbit/s", "{:.1f}"),
        ("iperf3, 8 streams", "throughput_8", "gbps", "Gbit/s", "{:.1f}"),
        ("max rate (wrk, 16 conn)", "max_rate", "rps", "requests/s", "{:,.0f}"),
        ("churn (new conn, 1 req each)", "churn", "conn_per_s", "connections/s", "{:,.0f}"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for ax, (title, workload, key, unit, fmt) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            found = stats.summarize(results, workload, name, key)
            if found is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            ax.bar(
                i, found.median, color=COLORS[name],
                yerr=[[found.median - found.low], [found.high - found.median]], capsize=3,
            )  # fmt: skip
            ax.text(i, found.high, fmt.format(found.median), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Throughput and request rates (median of runs; bars: min-max)")
    fig.tight_layout()
    name = "throughput.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name
