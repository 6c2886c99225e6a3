"""The L7 section of ``results.md`` and its milestone verdicts, from ``doc["l7"]``.

Ratios are ``ambit-waypoint`` over ``ambit-l4`` and over ``haproxy``, medians of
the same run. The waypoint's own cost (CPU per 1,000 requests/s, RSS) is given
in absolute numbers beside issue 12's first milestone.
"""

from __future__ import annotations

from typing import Any

from bench.compare import stats
from bench.compare.l7_features import report_lines
from bench.compare.l7_tap import report_lines as tap_lines
from bench.compare.stats import Results, Verdict

SCENARIOS = ("ambit-l4", "ambit-waypoint", "haproxy")
WAYPOINT = "ambit-waypoint"
# Issue 12's first milestone (Istio 1.24's published waypoint figures for the last two).
RATE_VS_L4 = 0.5
VCPU_PER_1K = 0.25
RSS_MB = 60.0
GRPC_CALLS = 2000.0


def _mb(kib: float | None) -> float | None:
    return None if kib is None else kib * 1024 / 1e6


def vcpu_per_1k(results: Results, scenario: str, key: str, seconds: float) -> float | None:
    """Median over the 1,000 req/s runs of CPU seconds (``key``) per second per 1,000 req/s."""
    runs = results.get("l7_latency_1000", {}).get(scenario, {}).get("runs", [])
    values = [
        r[key] / seconds / (r["achieved_rps"] / 1000)
        for r in runs
        if key in r and r.get("achieved_rps")
    ]
    return stats.median_of(values)


def waypoint_rss_1k(results: Results) -> float | None:
    """The waypoint's median VmRSS at a steady 1,000 req/s (median of the runs), MB."""
    return _mb(stats.median(results, "l7_latency_1000", WAYPOINT, "waypoint_rss_kib"))


def verdicts(l7: dict[str, Any], seconds: float) -> list[Verdict]:
    results: Results = l7.get("results", {})
    out = []
    rate = stats.ratio(results, "l7_max_rate", "rps", WAYPOINT, "ambit-l4")
    label = f"waypoint HTTP/1.1 request rate >= {RATE_VS_L4}x ambit's L4 path"
    out.append(Verdict(label, "n/a", None) if rate is None
               else Verdict(label, f"{rate:.2f}x ambit-l4", rate >= RATE_VS_L4))  # fmt: skip
    vcpu = vcpu_per_1k(results, WAYPOINT, "waypoint_cpu_s", seconds)
    label = f"waypoint CPU <= {VCPU_PER_1K} vCPU per 1,000 req/s (at 1,000 req/s)"
    out.append(Verdict(label, "n/a", None) if vcpu is None
               else Verdict(label, f"{vcpu:.3f} vCPU", vcpu <= VCPU_PER_1K))  # fmt: skip
    rss = waypoint_rss_1k(results)
    idle = l7.get("waypoint", {}).get("rss_idle_before_mb")
    label = f"waypoint RSS <= {RSS_MB:.0f} MB at a steady 1,000 req/s"
    shown = "n/a" if rss is None else f"{rss:.1f} MB" + (f" (idle {idle:.1f} MB)" if idle else "")
    out.append(Verdict(label, shown, None if rss is None else rss <= RSS_MB))
    grpc = stats.median(results, "l7_grpc", WAYPOINT, "rps")
    label = f"gRPC unary >= {GRPC_CALLS:,.0f} calls/s through the waypoint"
    out.append(Verdict(label, "n/a", None) if grpc is None
               else Verdict(label, f"{grpc:,.0f} calls/s", grpc >= GRPC_CALLS))  # fmt: skip
    return out


def _cell(results: Results, workload: str, scenario: str, key: str, digits: int = 0) -> str:
    found = stats.summarize(results, workload, scenario, key)
    if found is None:
        entry = results.get(workload, {}).get(scenario)
        return "error" if entry and entry.get("errors") else "—"
    if found.n == 1:
        return f"{found.median:,.{digits}f}"
    return f"{found.median:,.{digits}f} [{found.low:,.{digits}f}-{found.high:,.{digits}f}]"


def _x(results: Results, workload: str, key: str, scenario: str, base: str) -> str:
    if scenario == base:
        return "—"
    value = stats.ratio(results, workload, key, scenario, base)
    return "—" if value is None else f"{value:.2f}x"


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def section(doc: dict[str, Any]) -> list[str]:
    l7: dict[str, Any] | None = doc.get("l7")
    if not l7:
        return []
    results: Results = l7.get("results", {})
    seconds = float(doc["settings"]["rate_seconds"])
    names = [n for n in SCENARIOS if n in l7.get("scenarios", {})]
    out = [
        "## L7: through the waypoint, against ambit's L4 path and haproxy",
        "",
        "Same cluster and run; the waypoint serves namespace bench-l7 "
        "(`ambit waypoint apply -n bench-l7 --enroll-namespace`), bench-mesh is not enrolled.",
        "",
    ]
    out += [f"- **{n}**: {l7['scenarios'][n]}" for n in names] + [""]
    rows = []
    for n in names:
        row = [n]
        for workload in ("l7_max_rate", "l7_h2_rate", "l7_grpc"):
            row += [
                _cell(results, workload, n, "rps"),
                _x(results, workload, "rps", n, "ambit-l4"),
                _x(results, workload, "rps", n, "haproxy"),
            ]
        rows.append(row)
    out += _table(
        ["scenario", "HTTP/1.1 req/s (wrk, 16 conn)", "x ambit-l4", "x haproxy",
         "HTTP/2 req/s (h2load h2c, 4 conn x 16)", "x ambit-l4", "x haproxy",
         "gRPC unary calls/s (grpc-go, 4 conn x 32)", "x ambit-l4", "x haproxy"],
        rows,
    )  # fmt: skip
    main: Results = doc.get("results", {})
    rows = []
    for n in names:
        row = [n]
        for pct in ("50", "99"):
            key = f"p{pct}_ms"
            mine = stats.median(results, "l7_latency_1000", n, key)
            direct = stats.median(main, "latency_1000", "direct", key)
            l4 = stats.median(results, "l7_latency_1000", "ambit-l4", key)
            row += [
                _cell(results, "l7_latency_1000", n, key, 3),
                "—" if mine is None or direct is None else f"{mine - direct:+.3f}",
                "—" if mine is None or l4 is None or n == "ambit-l4" else f"{mine - l4:+.3f}",
            ]
        cpu = vcpu_per_1k(results, n, "cpu_s", seconds)
        rss = _mb(stats.median(results, "l7_latency_1000", n, "peak_rss_kib"))
        row += [
            _cell(results, "l7_latency_1000", n, "achieved_rps"),
            _f(cpu, ".3f"),
            str(len(l7.get("proxies", {}).get(n, []))),
            _f(rss, ".1f"),
        ]
        rows.append(row)
    out += [
        f"### At 1,000 requests/s (h2load --h1 --rps, 4 connections, {seconds:g} s)",
        "",
        *_table(
            ["scenario", "p50 ms", "added p50 vs direct", "added p50 vs ambit-l4", "p99 ms",
             "added p99 vs direct", "added p99 vs ambit-l4", "achieved req/s",
             "vCPU per 1,000 req/s (all proxies)", "proxy processes", "peak RSS MB (largest)"],
            rows,
        ),
        "Direct is the L4 section's `direct` at 1,000 req/s, from the same run. CPU: "
        "utime+stime of every proxy process of the path over the run, per second, per "
        "1,000 requests/s achieved.",
        "",
    ]  # fmt: skip
    out += _waypoint_cost(l7, results, seconds)
    out += ["### The waypoint against issue 12's first milestone", ""]
    out += _table(
        ["target", "measured", "verdict"],
        [[v["target"], v["measured"], v["verdict"]] for v in l7.get("verdicts", [])],
    )
    out += report_lines(l7.get("features", {}))
    out += tap_lines(l7.get("tap", {}))
    out += _profile(l7.get("profile", {}))
    errors = [
        f"- {w} / {n}: {e}"
        for w, per in results.items()
        for n, entry in per.items()
        for e in entry.get("errors", [])
    ] + [f"- {e}" for e in l7.get("errors", [])]
    if errors:
        out += ["### L7 errors", "", *errors, ""]
    return out


def _waypoint_cost(l7: dict[str, Any], results: Results, seconds: float) -> list[str]:
    wp = l7.get("waypoint", {})
    vcpu = vcpu_per_1k(results, WAYPOINT, "waypoint_cpu_s", seconds)
    rows = [["vCPU per 1,000 req/s at 1,000 req/s", _f(vcpu, ".3f"), f"<= {VCPU_PER_1K}"]]
    for workload, label in (("l7_max_rate", "HTTP/1.1 max rate"), ("l7_h2_rate", "HTTP/2"),
                            ("l7_grpc", "gRPC")):  # fmt: skip
        per = [
            r["waypoint_cpu_s"] / r["requests"] * 1e4
            for r in results.get(workload, {}).get(WAYPOINT, {}).get("runs", [])
            if r.get("requests") and "waypoint_cpu_s" in r
        ]
        rows.append([f"CPU s per 10k requests, {label}", _f(stats.median_of(per), ".2f"), ""])
    rows += [
        ["RSS MB when ready (no request yet)", _f(wp.get("rss_ready_mb"), ".1f"), ""],
        ["RSS MB idle, after the path checks", _f(wp.get("rss_idle_before_mb"), ".1f"), ""],
        ["RSS MB at a steady 1,000 req/s (median VmRSS)", _f(waypoint_rss_1k(results), ".1f"),
         f"<= {RSS_MB:.0f}"],
        ["peak RSS MB at 1,000 req/s (VmHWM)",
         _f(_mb(stats.median(results, "l7_latency_1000", WAYPOINT, "waypoint_peak_rss_kib")),
            ".1f"), ""],
        ["peak RSS MB at the HTTP/1.1 max rate",
         _f(_mb(stats.median(results, "l7_max_rate", WAYPOINT, "waypoint_peak_rss_kib")), ".1f"),
         ""],
        ["RSS MB idle, after every L7 workload", _f(wp.get("rss_idle_after_mb"), ".1f"), ""],
    ]  # fmt: skip
    return [
        "### The waypoint process alone",
        "",
        *_table(["measure", "waypoint", "milestone"], rows),
        "CPU from /proc/PID/stat (utime+stime) of the waypoint process over each run; RSS is "
        "VmRSS sampled every 0.25 s during the run (median), VmHWM reset before it. "
        "MB = 10^6 bytes.",
        "",
    ]


def _profile(profile: dict[str, Any]) -> list[str]:
    if not profile:
        return []
    if "error" in profile:
        return [f"Profile: {profile['error']}", ""]
    out = ["### Where the waypoint's time goes (py-spy, separate pass)", ""]
    for load, per in profile.items():
        summary = per.get("waypoint") if isinstance(per, dict) else None
        if not isinstance(summary, dict) or not summary.get("samples"):
            out += [f"- {load}: no samples {per.get('error', '') if isinstance(per, dict) else ''}",
                    ""]  # fmt: skip
            continue
        buckets = ", ".join(f"{k} {v:.0%}" for k, v in summary["buckets"].items())
        top = "; ".join(f"{k} {v:.0%}" for k, v in summary["top_self"][:8])
        out += [
            f"**{load}** ({summary['samples']} samples, {summary['idle_share']:.0%} in epoll "
            f"wait). Busy samples: {buckets}.",
            f"Hottest (self): {top}.",
            "",
        ]
    return out
