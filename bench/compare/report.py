"""``results.md`` from a run's JSON: the tables a reader compares at a glance.

Each cell is the median of the run's repetitions with ``[min-max]``; every
ratio is to a baseline of the same run. A workload that failed shows
``error`` and the message is listed at the end.
"""

from __future__ import annotations

from typing import Any

from bench.compare import l7_report, stats
from bench.compare.stats import Results

SCENARIOS = ("direct", "ambit", "stunnel", "haproxy")


def _cell(results: Results, workload: str, scenario: str, key: str, digits: int = 2) -> str:
    found = stats.summarize(results, workload, scenario, key)
    if found is None:
        entry = results.get(workload, {}).get(scenario)
        return "error" if entry and entry.get("errors") else "—"
    if found.n == 1:
        return f"{found.median:,.{digits}f}"
    return f"{found.median:,.{digits}f} [{found.low:,.{digits}f}-{found.high:,.{digits}f}]"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _added(results: Results, workload: str, scenario: str, key: str) -> str:
    top = stats.median(results, workload, scenario, key)
    base = stats.median(results, workload, "direct", key)
    if top is None or base is None or scenario == "direct":
        return "—"
    return f"{top - base:+.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _share(part: float | None, whole: float | None) -> str:
    return "—" if part is None or not whole else f"{part / whole:.0%}"


def _mb(kib: float | None) -> str:
    return "—" if kib is None else f"{kib * 1024 / 1e6:.1f}"


def render(doc: dict[str, Any]) -> str:
    results: Results = doc["results"]
    cfg = doc["settings"]
    names = [s for s in SCENARIOS if s in doc["scenarios"]]
    out = [
        f"# ambit side by side: {doc['started'][:16].replace('T', ' ')} UTC"
        f"{' (quick)' if doc['quick'] else ''}",
        "",
        f"ambit at commit {doc.get('commit', 'unknown')}. "
        f"Machine: {doc['machine']['cpus']} CPUs, Linux {doc['machine']['kernel']}, Python "
        f"{doc['machine']['python']}, load average at start {doc['machine']['loadavg_at_start']}. "
        f"Each cell: median of {cfg['reps']} runs [min-max] ({cfg['sweep_reps']} for the rate "
        "sweep); every ratio is to a baseline measured in this run.",
        "",
    ]
    if results:
        out += [f"- **{n}**: {doc['scenarios'][n]}" for n in names] + [""]
        out += _l4_sections(doc)
    out += l7_report.section(doc)
    errors = [
        f"- {w} / {n}: {e}"
        for w, per in results.items()
        for n, entry in per.items()
        for e in entry.get("errors", [])
    ]
    errors += [f"- {e}" for e in doc.get("errors", [])]
    if errors:
        out += ["## Errors", "", *errors, ""]
    return "\n".join(out)


def _l4_sections(doc: dict[str, Any]) -> list[str]:
    results: Results = doc["results"]
    cfg = doc["settings"]
    names = [s for s in SCENARIOS if s in doc["scenarios"]]
    out = ["## Throughput and request rate", ""]
    rows = []
    for n in names:
        rows.append([
            n,
            _cell(results, "throughput_1", n, "gbps"),
            _x(stats.ratio(results, "throughput_1", "gbps", n, "direct")),
            _cell(results, "throughput_8", n, "gbps"),
            _x(stats.ratio(results, "throughput_8", "gbps", n, "direct")),
            _cell(results, "max_rate", n, "rps", 0),
            _x(stats.ratio(results, "max_rate", "rps", n, "direct")),
            _x(stats.ratio(results, "max_rate", "rps", n, "stunnel")),
            _cell(results, "churn", n, "conn_per_s", 0),
        ])  # fmt: skip
    out += _table(
        ["scenario", "1 stream Gbit/s", "x direct", "8 streams Gbit/s", "x direct",
         "max req/s (wrk, 16 conn)", "x direct", "x stunnel", "new conn/s (1 req each)"],
        rows,
    )  # fmt: skip

    out += [
        f"## Latency at 1,000 requests/s ({cfg['rate_seconds']} s, HTTP/1.1, 1 KiB, "
        "4 connections, h2load --rps)",
        "",
    ]
    rows = [
        [n]
        + [_cell(results, "latency_1000", n, f"p{p}_ms", 3) for p in ("50", "90", "99")]
        + [_added(results, "latency_1000", n, f"p{p}_ms") for p in ("50", "90", "99")]
        + [_cell(results, "latency_1000", n, "achieved_rps", 0)]
        for n in names
    ]
    out += _table(
        ["scenario", "p50 ms", "p90 ms", "p99 ms", "added p50", "added p90", "added p99",
         "achieved req/s"],
        rows,
    )  # fmt: skip

    out += ["## Latency against rate (p50 / p99 ms; * = under 95% of the asked rate)", ""]
    rows = []
    for rate in doc["rates"]:
        workload = "latency_1000" if rate == 1000 else f"rate_{rate}"
        row = [f"{rate:,}"]
        for n in names:
            p50 = stats.median(results, workload, n, "p50_ms")
            p99 = stats.median(results, workload, n, "p99_ms")
            got = stats.median(results, workload, n, "achieved_rps")
            mark = "*" if got is not None and got < 0.95 * rate else ""
            row.append("—" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}{mark}")
        rows.append(row)
    out += _table(["req/s", *names], rows)

    out += ["## Cost of the proxies", ""]
    rows = []
    for n in names:
        if n == "direct":
            continue
        per_gb = stats.median_of(stats.cost_per_run(results, "throughput_1", n, "gb"))
        at_1k = stats.median_of(stats.cost_per_run(results, "latency_1000", n, "10k"))
        at_max = stats.median_of(stats.cost_per_run(results, "max_rate", n, "10k"))
        cpu_1k = stats.median(results, "latency_1000", n, "cpu_s")
        procs = doc["proxies"].get(n, [])
        vcpu = None if cpu_1k is None or not procs else cpu_1k / cfg["rate_seconds"] / len(procs)
        sys_1k = stats.median(results, "latency_1000", n, "cpu_sys_s")
        sys_max = stats.median(results, "max_rate", n, "cpu_sys_s")
        cpu_max = stats.median(results, "max_rate", n, "cpu_s")
        rows.append([
            n, f"{len(procs)}",
            "—" if per_gb is None else f"{per_gb:.2f}",
            "—" if at_1k is None else f"{at_1k:.2f}",
            "—" if at_max is None else f"{at_max:.2f}",
            "—" if vcpu is None else f"{vcpu:.3f}",
            _share(sys_1k, cpu_1k),
            _share(sys_max, cpu_max),
            _mb(stats.median(results, "latency_1000", n, "peak_rss_kib")),
            _mb(stats.median(results, "max_rate", n, "peak_rss_kib")),
        ])  # fmt: skip
    out += _table(
        ["scenario", "proxy processes", "CPU s / GB (1 stream)", "CPU s / 10k req at 1k req/s",
         "CPU s / 10k req at max rate", "vCPU per proxy at 1k req/s",
         "kernel share at 1k req/s", "kernel share at max rate",
         "peak RSS MB at 1k req/s", "peak RSS MB at max rate"],
        rows,
    )  # fmt: skip
    out += [
        "CPU: utime+stime of all proxy processes of the scenario over the run (kernel share: "
        "stime / (utime+stime)); RSS: the largest proxy process (VmHWM, reset before each "
        "run). MB = 10^6 bytes.",
        "",
    ]
    out += _idle_section(doc)
    out += ["## ambit against its targets", ""]
    out += _table(
        ["target", "measured", "verdict"],
        [[v["target"], v["measured"], v["verdict"]] for v in doc["verdicts"]],
    )
    out += _profile_section(doc.get("profile", {}))
    return out


def _idle_section(doc: dict[str, Any]) -> list[str]:
    idle: dict[str, Any] = doc.get("idle", {})
    if not idle:
        return []
    levels = sorted({int(k) for per in idle.values() for k in per if k.isdigit()})
    out = ["## Memory with idle open connections (RSS MB per process)", ""]
    rows = []
    for n, per in idle.items():
        roles = list(per.get("baseline_mb", {}))
        for role in roles:
            row = [n, role, f"{per['baseline_mb'][role]:.1f}"]
            for level in levels:
                entry = per.get(str(level), {})
                rss = entry.get("rss_mb", {}).get(role)
                short = "" if entry.get("open", level) >= level else f" ({entry.get('open')} open)"
                row.append("error" if rss is None else f"{rss:.1f}{short}")
            rows.append(row)
    out += _table(
        ["scenario", "process", "0 (after the workloads)", *[f"{lv:,}" for lv in levels]], rows
    )
    start = doc.get("rss_at_start_mb", {})
    if start:
        out += [
            "Each level is opened, measured and closed in turn (each connection makes one "
            "request first, so it is open end to end). RSS before any workload: "
            + ", ".join(f"{k} {v:.1f} MB" for k, v in start.items())
            + ".",
            "",
        ]
    return out


def _profile_section(profile: dict[str, Any]) -> list[str]:
    if not profile:
        return []
    out = [
        "## Where the ztunnels' time goes (py-spy, separate pass)",
        "",
        "Wall-clock samples: time inside socket calls includes waiting for a CPU after waking "
        "the peer; the kernel's share of CPU is the cost table's kernel share.",
        "",
    ]
    for load, per_node in profile.items():
        for node, summary in per_node.items():
            if not isinstance(summary, dict) or not summary.get("samples"):
                out += [f"- {load}, {node}: no samples", ""]
                continue
            buckets = ", ".join(f"{k} {v:.0%}" for k, v in summary["buckets"].items())
            python = ", ".join(f"{k} {v:.0%}" for k, v in summary.get("python", {}).items())
            top = "; ".join(f"{k} {v:.0%}" for k, v in summary["top_self"][:6])
            out += [
                f"**{load}, {node}** ({summary['samples']} samples, "
                f"{summary['idle_share']:.0%} in epoll wait). Busy samples: {buckets}. "
                f"Outside socket calls: {python}.",
                f"Hottest (self): {top}.",
                "",
            ]
    return out
