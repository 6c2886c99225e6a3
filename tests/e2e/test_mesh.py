"""The L4 ambient mesh, end to end, through the ``ambit`` command.

Each test brings up a real local cluster (network namespaces, iptables, a
ztunnel per node, the control plane) and looks at it as a user would: with
curl inside pods, ``ambit logs``, the Prometheus port, and a packet capture.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.ca_client import CaClient, CaRefused
from mesh.identity import SpiffeId, TrustBundle, build_csr, generate_key
from mesh.netns import NetworkNamespace
from tests.e2e.conftest import ECHO_SERVER, Cluster, config_dump, eventually

pytestmark = pytest.mark.root

MESH = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: tools, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-2
  serviceAccountName: web
  containers:
  - name: web
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: shop, labels: {app: echo}}
spec:
  nodeName: node-2
  serviceAccountName: echo
  containers:
  - name: echo
    command: [python3, -c, "ECHO"]
    ports: [{containerPort: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: client, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: shop}
spec:
  nodeName: node-1
  serviceAccountName: admin
  containers: [{name: admin, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: tools}
spec:
  nodeName: node-1
  serviceAccountName: probe
  containers: [{name: probe, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy}
spec:
  nodeName: node-1
  containers: [{name: old, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: legacy, labels: {app: plain}}
spec:
  nodeName: node-2
  containers:
  - name: plain
    command: [python3, -m, http.server, "9090", --bind, 0.0.0.0]
    ports: [{containerPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: legacy}
spec:
  selector: {app: plain}
  ports: [{port: 80, targetPort: 9090}]
"""


def manifest() -> str:
    return MESH.replace('"ECHO"', json.dumps(ECHO_SERVER))


async def up(cluster: Cluster) -> None:
    await cluster.up(cluster.manifest("mesh.yaml", manifest()))


async def http_status(cluster: Cluster, namespace: str, pod: str, url: str) -> str:
    """The HTTP status a pod's curl gets, or "000" when the connection fails."""
    result = await cluster.ambit(
        "exec", "-n", namespace, pod, "--",
        "curl", "-s", "-m", "4", "-o", "/dev/null", "-w", "%{http_code}", url,
    )  # fmt: skip
    return result.stdout.decode().strip() or "000"


# web and echo run on node-2: a policy selecting them changes node-2's view only
SERVERS = ("node-2",)


async def apply(cluster: Cluster, name: str, text: str, *, on: tuple[str, ...] = ()) -> None:
    """``ambit apply``, then wait until the ztunnels of the nodes ``on`` (default: every
    node) have the new config. A ztunnel's version moves only when its own view changes:
    a policy reaches the nodes of the pods it selects, a pod's change every node."""
    before = {n: (await config_dump(v["netns"]))["config_version"] for n, v in
              (await nodes(cluster)).items() if not on or n in on}  # fmt: skip
    result = await cluster.ambit("apply", "-f", str(cluster.manifest(name, text)))
    assert result.returncode == 0, result.stderr.decode()

    async def applied() -> bool:
        found = await nodes(cluster)
        versions = {n: (await config_dump(found[n]["netns"]))["config_version"] for n in before}
        return all(versions[n] > before[n] for n in before)

    assert await eventually(applied, seconds=5), "the ztunnels did not get the new config"


async def pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    data = await cluster.get("pods", "-A")
    items = data if isinstance(data, list) else data.get("pods", data.get("items", []))
    return {f"{p['namespace']}/{p['name']}": p for p in items}


async def nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    data = await cluster.get("nodes")
    items = data if isinstance(data, list) else data.get("nodes", data.get("items", []))
    return {n["name"]: n for n in items}


@asynccontextmanager
async def capture(netns: str) -> AsyncIterator[bytearray]:
    """Every frame on ``eth0`` of a pod while the block runs (AF_PACKET inside its netns)."""
    with NetworkNamespace.open(netns) as handle:
        raw = handle.raw_socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    raw.bind(("eth0", 0))  # the pod's eth0: a socket keeps the namespace it was made in
    sock = trio.socket.from_stdlib_socket(raw)
    frames = bytearray()
    with sock:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                while True:
                    frames.extend(await sock.recv(65536))

            nursery.start_soon(read)
            yield frames
            nursery.cancel_scope.cancel()
        # A frame is queued on the packet socket when it is sent or received, so all of the
        # block's traffic is queued by now: take the rest without waiting.
        while True:
            try:
                frames.extend(raw.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break


async def test_meshed_traffic_is_mtls_with_identities_in_logs_and_metrics(cluster: Cluster) -> None:
    with trio.fail_after(120):
        await up(cluster)
        marker = "marker-" + secrets.token_hex(6)
        url = f"http://web.shop/{marker}"
        netns = {k: p["netns"] for k, p in (await pods(cluster)).items()}
        async with capture(netns["shop/client"]) as meshed:
            assert await http_status(cluster, "shop", "client", url) == "404"  # reached web
        assert marker.encode() not in meshed, "plaintext left the meshed client"
        assert b"\x17\x03\x03" in meshed  # TLS application data
        async with capture(netns["legacy/old"]) as plain:  # control: a non-mesh client
            assert await http_status(cluster, "legacy", "old", url) == "404"
        assert marker.encode() in plain

        logs = (await cluster.ambit("logs", "ztunnel/node-2")).stdout.decode()
        inbound = [
            json.loads(line) for line in logs.splitlines()
            if '"connection_complete"' in line and '"inbound"' in line
        ]  # fmt: skip
        identities = {e["src.identity"] for e in inbound}
        assert "spiffe://cluster.local/ns/shop/sa/client" in identities
        node2 = (await nodes(cluster))["node-2"]["ip"]
        metrics = await scrape(f"http://{node2}:15020/metrics")
        assert 'source_principal="spiffe://cluster.local/ns/shop/sa/client"' in metrics
        assert 'destination_service="web.shop.svc.cluster.local"' in metrics
        assert 'connection_security_policy="mutual_tls"' in metrics

        # The app saw the client pod's own address (ztunnel keeps the source IP).
        client_ip = (await pods(cluster))["shop/client"]["ip"]
        web_log = (await cluster.ambit("logs", "-n", "shop", "pod/web")).stdout.decode()
        lines = [line for line in web_log.splitlines() if f"/{marker}" in line]
        assert lines
        assert lines[0].startswith(f"{client_ip} - - ")

        # A meshed client reaches a non-mesh server (passthrough).
        assert await http_status(cluster, "shop", "client", "http://plain.legacy/") == "200"


async def scrape(url: str) -> str:
    result = await trio.run_process(
        ["curl", "-s", "-m", "3", url], capture_stdout=True, check=False
    )
    return result.stdout.decode()


async def test_plaintext_clients_work_until_strict(cluster: Cluster) -> None:
    with trio.fail_after(120):
        await up(cluster)
        assert await http_status(cluster, "legacy", "old", "http://web.shop/") == "200"
        await apply(cluster, "strict.yaml", POLICY_STRICT)
        assert await http_status(cluster, "legacy", "old", "http://web.shop/") == "000"
        assert await http_status(cluster, "shop", "client", "http://web.shop/") == "200"


POLICY_STRICT = """\
apiVersion: security.ambit.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""

POLICY_DENY_ADMIN = """\
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/admin"]}}]}]
"""

POLICY_ALLOW_TOOLS = """\
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-tools, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: ["tools"]}}]
    to: [{operation: {ports: ["8080"]}}]
"""

POLICY_ALLOW_WRONG_PORT = """\
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-tools, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: ["tools"]}}]
    to: [{operation: {ports: ["9999"]}}]
"""


async def test_policies_by_principal_namespace_and_port(cluster: Cluster) -> None:
    with trio.fail_after(150):
        await up(cluster)
        assert await http_status(cluster, "shop", "admin", "http://web.shop/") == "200"
        await apply(cluster, "deny.yaml", POLICY_DENY_ADMIN, on=SERVERS)
        assert await http_status(cluster, "shop", "admin", "http://web.shop/") == "000"
        assert await http_status(cluster, "shop", "client", "http://web.shop/") == "200"

        await apply(cluster, "allow.yaml", POLICY_ALLOW_TOOLS, on=SERVERS)
        assert await http_status(cluster, "tools", "probe", "http://web.shop/") == "200"
        assert await http_status(cluster, "shop", "client", "http://web.shop/") == "000"

        await apply(cluster, "allow.yaml", POLICY_ALLOW_WRONG_PORT, on=SERVERS)
        assert await http_status(cluster, "tools", "probe", "http://web.shop/") == "000"

        logs = (await cluster.ambit("logs", "ztunnel/node-2")).stdout.decode()
        assert "shop/deny-admin" in logs  # the denial names the policy


HOLD_OPEN = """\
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
s.sendall(b"ping"); assert s.recv(4) == b"ping"
print("open", flush=True)
s.settimeout(15)
start = time.monotonic()
try:
    while s.recv(4096):
        pass
except OSError:
    pass
print(f"closed after {time.monotonic() - start:.1f}s", flush=True)
"""

POLICY_DENY_ECHO = """\
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: no-echo, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {namespaces: ["shop"]}}]}]
"""


async def test_a_policy_applied_to_a_running_cluster_cuts_an_open_connection(
    cluster: Cluster,
) -> None:
    with trio.fail_after(120):
        await up(cluster)
        echo_ip = (await pods(cluster))["shop/echo"]["ip"]
        env = {**os.environ, "AMBIT_STATE_DIR": str(cluster.state_dir)}
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "ambit.cli", "exec", "-n", "shop", "client", "--",
             "python3", "-c", HOLD_OPEN, echo_ip],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            out = bytearray()
            while b"open" not in out:
                out += await proc.stdout.receive_some()
            await apply(cluster, "no-echo.yaml", POLICY_DENY_ECHO, on=SERVERS)
            with trio.fail_after(5):
                while b"closed" not in out:
                    out += await proc.stdout.receive_some()
        finally:
            proc.kill()
            await proc.wait()
        seconds = float(out.decode().split("closed after ")[1].split("s")[0])
        assert seconds < 5


# Streams 4 MiB to the echo server over about 4 s, reads every byte back, and reports both
# digests and the pod IP it reached.
STREAM = """\
import hashlib, os, socket, sys, threading, time
s = socket.create_connection((sys.argv[1], 7000), timeout=20)
s.sendall(b"ping"); assert s.recv(4) == b"ping"  # the tunnel is up end to end
print("open", flush=True)
sent, got = hashlib.sha256(), hashlib.sha256()
def send():
    for i in range(128):
        chunk = hashlib.sha256(str(i).encode()).digest() * 1024
        sent.update(chunk); s.sendall(chunk); time.sleep(0.03)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
n = 0
while (d := s.recv(65536)):
    got.update(d); n += len(d)
t.join()
print("done", n, sent.hexdigest() == got.hexdigest(), flush=True)
"""

ALLOW_CLIENT_TO_ECHO = """\
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
"""


async def stream_to_echo(
    cluster: Cluster, echo_ip: str, chunks: int, meanwhile: Callable[[], Awaitable[None]]
) -> tuple[int, bool]:
    """Run STREAM (``chunks`` of 32 KiB) from shop/client to the echo pod; once the tunnel
    is up, run ``meanwhile``; return the bytes echoed back and whether their hash matched."""
    env = {**os.environ, "AMBIT_STATE_DIR": str(cluster.state_dir)}
    script = STREAM.replace("range(128)", f"range({chunks})")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ambit.cli", "exec", "-n", "shop", "client", "--",
         "python3", "-c", script, echo_ip],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        out = bytearray()
        while b"open" not in out:
            out += await proc.stdout.receive_some()
        await meanwhile()
        while b"done" not in out:
            chunk = await proc.stdout.receive_some()
            assert chunk, out
            out += chunk
    finally:
        proc.kill()
        await proc.wait()
    count, same = out.decode().split("done ")[1].split()
    return int(count), same == "True"


async def test_a_long_transfer_survives_relabelling_and_a_policy_that_allows_it(
    cluster: Cluster,
) -> None:
    with trio.fail_after(120):
        await up(cluster)
        before = (await pods(cluster))["shop/echo"]

        async def relabel_and_allow() -> None:
            echo_doc = next(d for d in manifest().split("---\n") if "name: echo," in d)
            relabelled = echo_doc.replace("labels: {app: echo}", "labels: {app: echo, v: two}")
            await apply(cluster, "relabel.yaml", relabelled)
            await apply(cluster, "allow.yaml", ALLOW_CLIENT_TO_ECHO, on=SERVERS)

        echoed = await stream_to_echo(cluster, before["ip"], 128, relabel_and_allow)
        assert echoed == (128 * 32 * 1024, True)
        after = (await pods(cluster))["shop/echo"]
        assert after["labels"] == {"app": "echo", "v": "two"}
        # Relabelled in place, as Kubernetes does: same pod, same address, same process.
        assert (after["ip"], after["pid"]) == (before["ip"], before["pid"])
        logs = (await cluster.ambit("logs", "ztunnel/node-2")).stdout.decode()
        captures = [
            line for line in logs.splitlines() if '"pod_captured"' in line and "shop/echo" in line
        ]
        assert len(captures) == 1  # never captured again


async def test_sigterm_drains_a_ztunnel_without_losing_an_open_connection(
    cluster: Cluster,
) -> None:
    """SIGTERM to the server node's ztunnel in the middle of a transfer: the transfer
    (shorter than the drain) completes byte-exact, ztunnel exits 0 after draining, and
    the restarted one serves again."""
    with trio.fail_after(120):
        await up(cluster)
        echo_ip = (await pods(cluster))["shop/echo"]["ip"]
        old_pid = int((await nodes(cluster))["node-2"]["ztunnel_pid"])

        async def sigterm() -> None:
            os.kill(old_pid, signal.SIGTERM)

        # 768 KiB over about 0.8 s, shorter than local mode's 5 s drain.
        assert await stream_to_echo(cluster, echo_ip, 24, sigterm) == (24 * 32 * 1024, True)
        logs = (await cluster.ambit("logs", "ztunnel/node-2")).stdout.decode()
        events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        [draining] = [e for e in events if e.get("event") == "ztunnel_draining"]
        assert draining["connections"] == 1  # the transfer was in flight at the SIGTERM
        [drained] = [e for e in events if e.get("event") == "ztunnel_drained"]
        assert drained["cut_at_deadline"] == 0
        assert any(e.get("event") == "ztunnel_stopping" for e in events)

        async def restarted() -> bool:
            pid = (await nodes(cluster))["node-2"]["ztunnel_pid"]
            return pid is not None and int(pid) != old_pid

        assert await eventually(restarted, seconds=30), "ztunnel was not restarted"

        async def served() -> bool:
            return await http_status(cluster, "shop", "client", "http://web.shop/") == "200"

        assert await eventually(served, seconds=30), "not served again after the restart"


async def test_traffic_survives_a_dead_control_plane_and_a_ztunnel_restart(
    cluster: Cluster,
) -> None:
    with trio.fail_after(150):
        await up(cluster)
        client_netns = (await pods(cluster))["shop/client"]["netns"]
        record = json.loads((cluster.state_dir / "state.json").read_text())
        (plane_pid,) = [p["pid"] for p in record["processes"] if p["what"] == "controlplane"]

        async def direct_curl() -> str:  # straight from the pod's namespace
            result = await trio.run_process(
                ["ip", "netns", "exec", client_netns, "curl", "-s", "-m", "4",
                 "-o", "/dev/null", "-w", "%{http_code}", "http://web.shop/"],
                capture_stdout=True, check=False,
            )  # fmt: skip
            return result.stdout.decode() or "000"

        os.kill(plane_pid, signal.SIGSTOP)  # the control plane (and CA) stop answering
        try:
            await trio.sleep(1)
            for _ in range(3):
                assert await direct_curl() == "200"  # ztunnels serve their last config
        finally:
            os.kill(plane_pid, signal.SIGCONT)

        old_pid = int((await nodes(cluster))["node-2"]["ztunnel_pid"])
        os.kill(old_pid, signal.SIGKILL)
        with trio.fail_after(30):  # restarted, re-captures its pods, serves again
            while True:
                await trio.sleep(0.5)
                if await direct_curl() == "200":
                    break
        assert (await nodes(cluster))["node-2"]["ztunnel_pid"] != old_pid


async def wait_dead(pid: int) -> None:
    """Until ``pid`` has exited (a zombie counts: its parent is stopped and cannot reap it)."""

    def state() -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"

    with trio.fail_after(5):
        while state() not in ("Z", "X", "gone"):  # noqa: ASYNC110 - no event to wait on
            await trio.sleep(0.01)


@pytest.mark.parametrize(("node", "sig"), [("node-1", signal.SIGKILL), ("node-2", signal.SIGTERM)])
async def test_a_stopped_ztunnel_fails_closed_until_it_is_back(
    cluster: Cluster, node: str, sig: signal.Signals
) -> None:
    """node-1 runs the client, node-2 the server: with either ztunnel gone, the meshed
    client's new connections fail and nothing crosses the wire in plaintext."""
    with trio.fail_after(150):
        await up(cluster)
        client_netns = (await pods(cluster))["shop/client"]["netns"]
        record = json.loads((cluster.state_dir / "state.json").read_text())
        daemon_pid = int(record["daemon"]["pid"])
        marker = "marker-" + secrets.token_hex(6)

        async def direct_curl() -> str:  # not through the daemon: it is stopped
            result = await trio.run_process(
                ["ip", "netns", "exec", client_netns, "curl", "-s", "-m", "3",
                 "-o", "/dev/null", "-w", "%{http_code}", f"http://web.shop/{marker}"],
                capture_stdout=True, check=False,
            )  # fmt: skip
            return result.stdout.decode() or "000"

        first = await direct_curl()
        assert first == "404", f"before the kill: {first}"  # reached web through the mesh
        ztunnel_pid = int((await nodes(cluster))[node]["ztunnel_pid"])
        os.kill(daemon_pid, signal.SIGSTOP)  # nothing restarts the ztunnel meanwhile
        try:
            os.kill(ztunnel_pid, sig)
            await wait_dead(ztunnel_pid)
            async with capture(client_netns) as frames:
                answers = [await direct_curl() for _ in range(3)]
            assert answers == ["000"] * 3, f"with {node}'s ztunnel down: {answers}"
            assert marker.encode() not in frames, "plaintext left while ztunnel was down"
        finally:
            os.kill(daemon_pid, signal.SIGCONT)

        async def served() -> bool:
            return await direct_curl() == "404"

        # Restarted, it takes its pods again and serves again.
        assert await eventually(served, seconds=30, poll=0.5), "not served again within 30 s"


async def test_the_ca_issues_a_node_only_the_identities_of_its_own_pods(cluster: Cluster) -> None:
    with trio.fail_after(90):
        await up(cluster)
        mesh_dir = cluster.state_dir / "mesh"
        token = (mesh_dir / "tokens" / "node-1").read_text()
        bundle = TrustBundle.from_pem((mesh_dir / "bundle.pem").read_bytes())
        host = cluster.pod_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
        ca = CaClient((host, 15012), token=token, bundle=bundle)
        key = generate_key()
        own = SpiffeId("cluster.local", "shop", "client")  # client runs on node-1
        chain, _ = await ca.sign(build_csr(own, key), None)
        assert chain[0] is not None
        foreign = SpiffeId("cluster.local", "shop", "web")  # web runs on node-2
        with pytest.raises(CaRefused) as refused:
            await ca.sign(build_csr(foreign, key), None)
        assert refused.value.status == 403
