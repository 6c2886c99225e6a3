"""The schedule of a run: which workload, how long, how many times, in which order.

Repetitions are interleaved (rep 1 of every scenario, then rep 2...) so that a
drift of the machine hits every scenario alike. A failing run is recorded as
an error of that cell and the run goes on; a scenario whose path does not
carry requests at all is marked broken once and skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.compare import profile, workloads
from bench.compare.stats import Results
from bench.compare.system import BenchError, Daemons, in_netns, rss_kib, stop
from bench.compare.topology import HTTP_PORT, REPO
from bench.compare.workloads import Sample, Scenario


@dataclass(frozen=True)
class Settings:
    reps: int
    sweep_reps: int
    iperf_seconds: int
    rate_seconds: int  # the 1,000 req/s run (Istio's profile)
    sweep_seconds: int
    sweep_rates: tuple[int, ...]  # besides 1,000
    max_seconds: int
    churn_seconds: int
    idle_levels: tuple[int, ...]
    idle_scenarios: tuple[str, ...]  # whose proxies' RSS is read with idle connections
    profile_seconds: int  # 0: no profile pass
    pause: float  # between two runs, so one's tail never overlaps the next

    @property
    def rates(self) -> list[int]:
        return sorted({1000, *self.sweep_rates})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rates": self.rates}


FULL = Settings(
    reps=5, sweep_reps=3, iperf_seconds=5, rate_seconds=10, sweep_seconds=5,
    sweep_rates=(250, 500, 2000, 4000, 8000), max_seconds=5, churn_seconds=5,
    idle_levels=(10, 1000, 5000), idle_scenarios=("ambit", "stunnel"), profile_seconds=15,
    pause=0.5,
)  # fmt: skip
QUICK = Settings(
    reps=1, sweep_reps=1, iperf_seconds=2, rate_seconds=3, sweep_seconds=2,
    sweep_rates=(250, 4000), max_seconds=2, churn_seconds=2,
    idle_levels=(10, 1000), idle_scenarios=("ambit",), profile_seconds=0, pause=0.2,
)  # fmt: skip


class Runner:
    """Runs workloads on scenarios into a :data:`Results` dict, printing one line per run."""

    def __init__(self, settings: Settings, scenarios: list[Scenario], raw_dir: Path) -> None:
        self.settings = settings
        self.scenarios = scenarios
        self.raw_dir = raw_dir
        self.results: Results = {}
        self.broken: dict[str, str] = {}
        self.count = 0

    def check_paths(self) -> None:
        for scenario in self.scenarios:
            try:
                workloads.check_path(scenario)
            except BenchError as exc:
                self.broken[scenario.name] = str(exc)
                print(f"  {scenario.name}: BROKEN: {exc}", flush=True)

    def one(self, workload: str, scenario: Scenario, work: Callable[[Scenario], Sample]) -> None:
        entry = self.results.setdefault(workload, {}).setdefault(
            scenario.name, {"runs": [], "errors": []}
        )
        self.count += 1
        if scenario.name in self.broken:
            entry["errors"].append(f"skipped: {self.broken[scenario.name]}")
            return
        try:
            sample = workloads.with_cost(scenario, lambda: work(scenario))
        except (BenchError, OSError, KeyError, ValueError) as exc:
            entry["errors"].append(f"{type(exc).__name__}: {exc}")
            print(f"  [{self.count:3}] {workload:<14} {scenario.name:<8} ERROR {exc}", flush=True)
            return
        entry["runs"].append(sample)
        shown = ", ".join(
            f"{k} {v:,.3g}"
            for k, v in sample.items()
            if k not in ("bytes", "requests", "failed", "cpu_sys_s")
        )
        print(f"  [{self.count:3}] {workload:<14} {scenario.name:<8} {shown}", flush=True)
        time.sleep(self.settings.pause)

    def series(
        self,
        workload: str,
        reps: int,
        work: Callable[[Scenario], Sample],
        only: Callable[[Scenario], bool] = lambda s: True,
    ) -> None:
        for _ in range(reps):
            for scenario in self.scenarios:
                if only(scenario):
                    self.one(workload, scenario, work)

    def all_workloads(self) -> Results:
        s = self.settings
        l4 = lambda sc: sc.iperf is not None  # noqa: E731
        print("throughput (iperf3)", flush=True)
        self.series(
            "throughput_1", s.reps, lambda sc: workloads.throughput(sc, 1, s.iperf_seconds), l4
        )
        self.series(
            "throughput_8", s.reps, lambda sc: workloads.throughput(sc, 8, s.iperf_seconds), l4
        )
        print("latency at 1,000 req/s (h2load --rps)", flush=True)
        self.series("latency_1000", s.reps, lambda sc: self._rate(sc, 1000, s.rate_seconds))
        print(f"latency against rate {list(s.sweep_rates)} (h2load --rps)", flush=True)
        for rate in s.sweep_rates:
            self.series(f"rate_{rate}", s.sweep_reps, self._at_rate(rate, s.sweep_seconds))
        print("max request rate (wrk)", flush=True)
        self.series("max_rate", s.reps, lambda sc: workloads.max_rate(sc, s.max_seconds))
        print("connection churn (wrk, Connection: close)", flush=True)
        self.series("churn", s.reps, lambda sc: workloads.churn(sc, s.churn_seconds))
        return self.results

    def _at_rate(self, rate: int, seconds: int) -> Callable[[Scenario], Sample]:
        return lambda scenario: self._rate(scenario, rate, seconds)

    def _rate(self, scenario: Scenario, rate: int, seconds: int) -> Sample:
        log = self.raw_dir / f"h2load-{scenario.name}-{rate}.tsv"
        return workloads.fixed_rate(scenario, rate, seconds, log)


# ---- idle connections -----------------------------------------------------------


def idle_rss(scenario: Scenario, target: tuple[str, int], levels: tuple[int, ...], raw_dir: Path,
             daemons: Daemons) -> dict[str, Any]:  # fmt: skip
    """RSS of the scenario's proxies with N idle connections held open through them."""
    out: dict[str, Any] = {"baseline_mb": _rss_mb(scenario)}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for level in levels:
        ready = raw_dir / f"hold-{scenario.name}-{level}.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "bench.compare.hold", str(level), target[0], str(target[1]),
                str(ready), "90"]  # fmt: skip
        proc = subprocess.Popen(
            in_netns(scenario.netns, argv), env=env, cwd=REPO, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 80
            while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            if not ready.exists():
                out[str(level)] = {"error": "the holder did not open its connections in time"}
                continue
            time.sleep(1.0)  # let the proxies settle
            entry: dict[str, Any] = json.loads(ready.read_text())
            entry["rss_mb"] = _rss_mb(scenario)
            out[str(level)] = entry
            print(f"  idle {scenario.name:<8} {level:>5}: {entry}", flush=True)
        finally:
            stop(proc, grace=15)
        time.sleep(1.0)
    daemons.check_alive()
    return out


def _rss_mb(scenario: Scenario) -> dict[str, float]:
    return {role: rss_kib(pid) * 1024 / 1e6 for role, pid in scenario.proxies.items()}


# ---- profile ----------------------------------------------------------------------


def profile_pass(ambit: Scenario, raw_dir: Path, seconds: int) -> dict[str, Any]:
    """py-spy on both ztunnels during 1,000 req/s and during the max-rate load."""
    out: dict[str, Any] = {}
    if not profile.ensure_py_spy():
        return {"error": "py-spy is not installed and pip could not install it"}
    loads: dict[str, Callable[[], Sample]] = {
        "1,000 req/s": lambda: workloads.fixed_rate(
            ambit, 1000, seconds + 2, raw_dir / "h2load-profile.tsv"
        ),
        "max rate": lambda: workloads.max_rate(ambit, seconds + 2),
    }
    for label, load in loads.items():
        directory = raw_dir / profile_dir_name(label)
        directory.mkdir(parents=True, exist_ok=True)
        pids = {role.replace(" ", "-"): pid for role, pid in ambit.proxies.items()}
        procs = profile.record(pids, seconds, directory)
        time.sleep(0.5)
        try:
            load()
        except BenchError as exc:
            out[label] = {"error": str(exc)}
        profile.finish(procs, timeout=seconds + 20)
        out.setdefault(label, profile.summarize_dir(directory))
        print(f"  profiled ztunnels under {label}", flush=True)
    return out


def profile_dir_name(label: str) -> str:
    """``"1,000 req/s"`` -> ``"profile-1000-reqs"``: where a load's py-spy stacks go."""
    return "profile-" + label.replace(",", "").replace(" ", "-").replace("/", "")


def http_target(scenario: Scenario) -> tuple[str, int]:
    """Host and port of the scenario's HTTP URL (``http://HOST:PORT/...``)."""
    hostport = scenario.url.split("/")[2]
    host, _, port = hostport.partition(":")
    return host, int(port or HTTP_PORT)
