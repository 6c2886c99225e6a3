"""Processes, ``/proc`` readings and the tools the baselines need.

Everything here is bounded: commands run under a timeout, daemons are
remembered by PID and stopped by that PID only (TERM, then KILL), and
``ensure_tools`` installs missing Debian packages with ``apt-get`` once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# binary -> Debian package that provides it
TOOLS = {
    "iperf3": "iperf3",
    "stunnel4": "stunnel4",
    "haproxy": "haproxy",
    "nginx": "nginx",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "ss": "iproute2",
    "ip": "iproute2",
    "iptables": "iptables",  # ambit's local mode
}


class BenchError(Exception):
    """A step of the benchmark failed; the message says what and, when known, what to do."""


@dataclass(frozen=True)
class Completed:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def check(self, what: str) -> Completed:
        if self.returncode != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-3:]
            raise BenchError(f"{what} exited {self.returncode}: {' | '.join(tail)}")
        return self


def run(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> Completed:
    """Run a command to completion, killed after ``timeout`` seconds (then a BenchError)."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise BenchError(f"{argv[0]} is not installed") from exc
    return Completed(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside a named network namespace (``ip netns exec`` execs it: same PID)."""
    return ["ip", "netns", "exec", netns, *argv]


@dataclass
class Daemons:
    """Long-running processes we started, stopped by PID (never by name) in reverse order."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str]) -> int:
        log = (self.log_dir / f"{name}.log").open("wb")
        with log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        self.started.append((name, proc))
        return proc.pid

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                log = (self.log_dir / f"{name}.log").read_text(errors="replace").strip()
                tail = " | ".join(log.splitlines()[-3:])
                raise BenchError(f"{name} exited with {proc.returncode}: {tail}")

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            stop(proc)
        self.started.clear()


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """TERM the process by its PID, KILL it after ``grace`` seconds, and reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def wait_listening(netns: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on TCP ``port`` inside ``netns`` (no traffic sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(in_netns(netns, ["ss", "-Hltn", f"sport = :{port}"]), timeout=5).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise BenchError(f"nothing listens on port {port} in {netns} after {timeout:.0f} s")


# ---- /proc ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all its threads (not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """Peak RSS (VmHWM) since the process started or since :func:`reset_peak_rss`."""
    return _status_kib(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (``clear_refs`` value 5, Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---- tools ----------------------------------------------------------------------


def ensure_tools(log: list[str]) -> None:
    """Install the Debian packages of missing tools; record what was installed in ``log``."""
    missing = sorted({pkg for binary, pkg in TOOLS.items() if shutil.which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing {', '.join(missing)}: run as root or apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    run(["apt-get", "update", "-qq"], timeout=300, env=env).check("apt-get update")
    run(["apt-get", "install", "-y", "-qq", *missing], timeout=900, env=env).check(
        "apt-get install"
    )
    log.extend(missing)


def ensure_python_package(module: str, package: str, log: list[str]) -> bool:
    """Import ``module`` or pip-install ``package`` into this interpreter; False if impossible."""
    try:
        __import__(module)
        return True
    except ImportError:
        pass
    print(f"installing {package} with pip (bench only)", flush=True)
    result = run([sys.executable, "-m", "pip", "install", "--quiet", package], timeout=600)
    if result.returncode != 0:
        return False
    log.append(f"{package} (pip)")
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def tool_versions() -> dict[str, str]:
    """One line of version text per tool, for the record."""
    commands = {
        "iperf3": ["iperf3", "--version"],
        "stunnel4": ["stunnel4", "-version"],
        "haproxy": ["haproxy", "-v"],
        "nginx": ["nginx", "-v"],
        "wrk": ["wrk", "--version"],
        "h2load": ["h2load", "--version"],
    }
    versions: dict[str, str] = {}
    for name, argv in commands.items():
        try:
            done = run(argv, timeout=10)
        except BenchError as exc:
            versions[name] = str(exc)
            continue
        text = (done.stdout + done.stderr).strip().splitlines()
        lines = [line for line in text if any(ch.isdigit() for ch in line)]
        versions[name] = (lines or ["?"])[0].strip()[:80]
    return versions


def source_version(repo: Path) -> str:
    """The commit measured, ``+changes`` when files outside ``bench/`` differ from it."""
    try:
        head = run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], timeout=10)
        status = [
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench",
            ":!Makefile",
        ]
        diff = run(["git", "--no-optional-locks", "-C", str(repo), *status], timeout=10)
    except BenchError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if diff.stdout.strip() else "")


def machine() -> dict[str, object]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_at_start": [round(x, 2) for x in load],
    }
