"""py-spy profiles of the ztunnels under load, and a summary of where their CPU goes.

``py-spy record -f raw`` writes one line per distinct stack,
``frame;frame;...;leaf COUNT``, each frame ``function (file:line)``. The
summary attributes each sample to one bucket by its innermost recognisable
frame (TLS, HTTP/2 framing, socket system calls, Trio's scheduler, epoll,
logging, ambit's own code) and lists the hottest leaf functions (self time).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.compare.system import run, stop

SOCKET = "socket calls"
# Checked against the leaf first, then outwards: the first bucket whose pattern
# matches a frame's file or function wins.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("epoll wait (idle)", re.compile(r"get_events \(trio/_core/_io_epoll")),
    ("TLS (ssl)", re.compile(r"\(ssl\.py:|SSLObject|mesh/tls\.py")),
    (
        "HTTP/2 (h2, hpack, hyperframe, hbone frames)",
        re.compile(r"\((h2|hpack|hyperframe)/|frames\.py"),
    ),
    # the C socket call (send/recv_into) runs inside these frames: kernel TCP and the bridge
    (SOCKET, re.compile(r"_nonblocking_helper \(trio/_socket|\(mesh/sockio\.py")),
    (
        "logging / metrics",
        re.compile(r"\((structlog|logging|prometheus_client)/|accesslog|metrics\.py"),
    ),
    ("Trio scheduler", re.compile(r"\(trio/")),
    ("HTTP/1.1 parsing (httptools, h11)", re.compile(r"\((httptools|h11)/|waypoint/http1\.py")),
    ("ambit code (mesh, ztunnel, waypoint)", re.compile(r"\((mesh|ztunnel|waypoint)/")),
]


def py_spy() -> str | None:
    """py-spy beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def ensure_py_spy() -> bool:
    """py-spy is there, or pip installs it beside this interpreter; False if neither."""
    if py_spy() is None:
        run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], timeout=600)
    return py_spy() is not None


def record(pids: dict[str, int], seconds: int, out_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Start one py-spy per PID, writing ``<out_dir>/<name>.raw.txt``; returns the processes."""
    binary = py_spy()
    if binary is None:
        return []
    procs = []
    for name, pid in pids.items():
        argv = [binary, "record", "--pid", str(pid), "-f", "raw", "-r", "200",
                "-d", str(seconds), "-o", str(out_dir / f"{name}.raw.txt")]  # fmt: skip
        log = (out_dir / f"{name}.py-spy.log").open("wb")
        with log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True))
    return procs


def finish(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in BUCKETS:
            if pattern.search(frame):
                return name
    return "other (interpreter, stdlib)"


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``."""
    match = re.match(r"(.*) \((?:.*/)?([^/:]+):\d+\)$", frame)
    return f"{match.group(1)} ({match.group(2)})" if match else frame


def summarize(text: str, top: int = 12) -> dict[str, Any]:
    """Buckets (% of busy samples, epoll wait excluded) and the hottest leaves (self %).

    py-spy samples wall-clock time: a sample inside a socket call also counts the time
    the process waits for a CPU after waking its peer there (2 cores, 5 busy processes),
    so ``python`` also gives the shares of the other buckets among themselves: where the
    user-space (interpreter) time goes. /proc's stime is the kernel's true share.
    """
    stacks = parse_raw(text)
    total = sum(count for _, count in stacks)
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        buckets[bucket_of(frames)] += count
        leaves[_short(frames[-1]) if frames else "?"] += count
    idle = buckets.pop("epoll wait (idle)", 0)
    busy = total - idle
    python = busy - buckets.get(SOCKET, 0)
    return {
        "samples": total,
        "busy_samples": busy,
        "idle_share": round(idle / total, 3) if total else None,
        "buckets": {k: round(v / busy, 3) for k, v in buckets.most_common()} if busy else {},
        "python": {k: round(v / python, 3) for k, v in buckets.most_common() if k != SOCKET}
        if python
        else {},
        "top_self": [[k, round(v / total, 3)] for k, v in leaves.most_common(top)] if total else [],
    }


def summarize_dir(out_dir: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted(out_dir.glob("*.raw.txt")):
        found[path.name.removesuffix(".raw.txt")] = summarize(path.read_text())
    return found
