"""Hitless ztunnel restarts, through the real ``ambit restart``: a long hashed transfer
between pods on two nodes and a loop of new connections (several per second) across two
restarts of each node's ztunnel; the transfer completes byte-exact and no new connection
fails. A transfer longer than the drain deadline is cut at the deadline, with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import trio

from tests.e2e.conftest import ECHO_SERVER, Cluster
from tests.e2e.test_mesh import STREAM

pytestmark = pytest.mark.root

MANIFEST = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{ambit.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec:
  nodeName: node-2
  serviceAccountName: web
  containers:
  - name: web
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: shop, labels: {{app: echo}}}}
spec:
  nodeName: node-2
  serviceAccountName: echo
  containers:
  - name: echo
    command: [python3, -c, {json.dumps(ECHO_SERVER)}]
    ports: [{{containerPort: 7000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{{name: client, command: [sleep, "600"]}}]
"""

# In the client pod: new HTTP connections to web.shop, one every 0.1 s, until stdin
# closes (or 120 s); one line per failure, then a summary.
LOOP = """\
import select, socket, sys, time
ok = failed = 0
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
        break
    try:
        s = socket.create_connection(("web.shop", 80), timeout=5)
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.0 200"):
            ok += 1
        else:
            failed += 1; print("bad answer", data[:40], flush=True)
    except OSError as exc:
        failed += 1; print("failed", exc, flush=True)
    time.sleep(0.1)
print("summary", ok, failed, flush=True)
"""


def in_client(cluster: Cluster, script: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "ambit.cli", "exec", "-n", "shop", "client", "--",
        "python3", "-c", script, *args,
    ]  # fmt: skip


async def pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in await cluster.get("pods", "-n", "shop")}


async def restart(cluster: Cluster, node: str) -> dict[str, int]:
    result = await cluster.ambit("restart", f"ztunnel/{node}", seconds=120)
    assert result.returncode == 0, result.stderr.decode()
    # "ztunnel/node-1 restarted: pid 123 -> 456 (2.1s)"
    words = result.stdout.decode().split()
    return {"old": int(words[3]), "new": int(words[5])}


async def test_two_restarts_of_each_ztunnel_lose_no_connection(cluster: Cluster) -> None:
    env = {**os.environ, "AMBIT_STATE_DIR": str(cluster.state_dir)}
    with trio.fail_after(240):
        await cluster.up(cluster.manifest("shop.yaml", MANIFEST))
        echo_ip = (await pods(cluster))["echo"]["ip"]
        # 96 chunks of 32 KiB over about 3 s: shorter than local mode's 5 s drain.
        transfer = await trio.lowlevel.open_process(
            in_client(cluster, STREAM.replace("range(128)", "range(96)"), echo_ip),
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        loop = await trio.lowlevel.open_process(
            in_client(cluster, LOOP), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert transfer.stdout is not None
        assert loop.stdin is not None
        assert loop.stdout is not None
        try:
            out = bytearray()
            while b"open" not in out:
                out += await transfer.stdout.receive_some()
            pids: dict[str, list[int]] = {"node-1": [], "node-2": []}
            for node in ("node-1", "node-2", "node-1", "node-2"):
                done = await restart(cluster, node)
                pids[node] += [done["old"], done["new"]]
            while b"done" not in out:
                chunk = await transfer.stdout.receive_some()
                assert chunk, out
                out += chunk
            await loop.stdin.aclose()  # ends the loop; it prints its summary
            summary = bytearray()
            while b"summary" not in summary:
                chunk = await loop.stdout.receive_some()
                assert chunk, summary
                summary += chunk
        finally:
            for proc in (transfer, loop):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
    count, same = out.decode().split("done ")[1].split()
    assert (int(count), same) == (96 * 32 * 1024, "True"), "the transfer lost bytes"
    ok, failed = summary.decode().split("summary ")[1].split()
    assert int(failed) == 0, summary.decode()
    assert int(ok) >= 20, f"too few new connections were tried: {summary.decode()}"
    for seen in pids.values():  # two hand-overs each: three processes in a row
        assert seen[1] == seen[2], seen
        assert len(set(seen)) == 3, seen
    components = {c["name"]: c for c in await cluster.get("components")}
    assert components["ztunnel/node-1"]["restarts"] == 0, "a hand-over is not a crash"
    assert components["ztunnel/node-1"]["pid"] == pids["node-1"][-1]


async def test_a_transfer_longer_than_the_drain_is_cut_at_the_deadline(cluster: Cluster) -> None:
    env = {**os.environ, "AMBIT_STATE_DIR": str(cluster.state_dir)}
    with trio.fail_after(120):
        await cluster.up(cluster.manifest("shop.yaml", MANIFEST))
        echo_ip = (await pods(cluster))["echo"]["ip"]
        # 400 chunks over about 12 s: longer than the 5 s drain.
        transfer = await trio.lowlevel.open_process(
            in_client(cluster, STREAM.replace("range(128)", "range(400)"), echo_ip),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        assert transfer.stdout is not None
        try:
            out = bytearray()
            while b"open" not in out:
                out += await transfer.stdout.receive_some()
            done = await restart(cluster, "node-2")
            while chunk := await transfer.stdout.receive_some():
                out += chunk
        finally:
            if transfer.returncode is None:
                transfer.kill()
            await transfer.wait()
    assert b"done 13107200 True" not in out, "the transfer outlived the drain deadline"
    logs = (await cluster.ambit("logs", "ztunnel/node-2")).stdout.decode()
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    drained = [e for e in events if e.get("event") == "ztunnel_drained"]
    assert drained[-1]["cut_at_deadline"] == 1
    assert drained[-1]["seconds"] == 5.0
    cut = [e for e in events if e.get("reason") == "drain_deadline"]
    assert len(cut) == 1, "the cut connection is logged once, with its reason"
    assert "drain deadline (5s)" in cut[0]["error"]
    assert done["old"] != done["new"]
