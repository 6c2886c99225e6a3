"""Hold N idle connections open: ``python -m bench.compare.hold N HOST PORT READY SECONDS``.

Run inside a client pod's netns. Each connection sends one HTTP/1.1 request
for ``/1k`` and reads the answer (so it is open end to end, through every
proxy on the path), then stays open and idle. When all are open (or the
first failure, or the time is up) it writes ``{"open": K, "errors": E}`` to
the READY file, then waits until SIGTERM or ``SECONDS`` pass, and closes them.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

REQUEST = b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY = 1024


def _one(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < BODY:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    return sock


def main(argv: list[str]) -> int:
    count, host, port, ready, seconds = int(argv[0]), argv[1], int(argv[2]), argv[3], float(argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, count + 100) if hard != resource.RLIM_INFINITY else count + 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    stop = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + seconds
    held: list[socket.socket] = []
    errors: list[str] = []
    while len(held) < count and not stop and time.monotonic() < deadline:
        try:
            held.append(_one(host, port))
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            break
    Path(ready).write_text(json.dumps({"open": len(held), "errors": errors[:3]}))
    while not stop and time.monotonic() < deadline:
        time.sleep(0.1)
    for sock in held:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
