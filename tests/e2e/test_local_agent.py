"""Local mode takes the node side's path: each node runs ``ambit node-agent`` beside its
ztunnel; the agent puts ``ambit-cni`` in the node's CNI config, the local cluster runs
that chain for each pod as a container runtime would, the plugin asks the agent, and the
agent installs the capture rules and hands the pod to ztunnel over its socket
(docs/node.md). What runs on a laptop is what runs on a node."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import ECHO_SERVER, Cluster, curl_status, eventually, run
from tests.e2e.test_mesh import capture, http_status
from tests.e2e.test_mesh_lifecycle import (
    AMBIENT,
    CHANGES_SECONDS,
    CLIENT,
    ECHO_POD,
    PLAIN,
    SERVER,
    apply,
    capture_chains,
    cluster_manifest,
    components,
    held_connection,
    inbound,
    kill_component,
    pods,
    wait_inbound,
)

pytestmark = pytest.mark.root


async def agent_events(cluster: Cluster, node: str, event: str) -> list[dict[str, Any]]:
    result = await cluster.ambit("logs", f"node-agent/{node}")
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith(b"{")]
    return [line for line in lines if line.get("event") == event]


async def agent_records(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    """The agent's records of the ADDs the plugin sent it (``pods.json``, by uid)."""
    path = Path(cluster.state_dir) / "nodes" / node / "agent" / "pods.json"
    return [{"uid": uid, **entry} for uid, entry in json.loads(path.read_text()).items()]


async def agent_status(cluster: Cluster, node: str) -> dict[str, Any]:
    ip = {n["name"]: n["ip"] for n in await cluster.get("nodes")}[node]
    result = await run(["curl", "-s", "-m", "3", f"http://{ip}:15031/status"])
    status: dict[str, Any] = json.loads(result.stdout)
    return status


async def test_agent_captures_pods(cluster: Cluster) -> None:
    """A pod in a labelled namespace is captured through its node's CNI chain and agent:
    ambit-cni is last in the node's conflist, the agent logs the pod and lists it, and
    what leaves the client pod is TLS."""
    with trio.fail_after(90):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT)))
        the_pods = await pods(cluster)
        assert {p["captured"] for p in the_pods.values()} == {True}
        (enrolled,) = await agent_events(cluster, "node-1", "pod_enrolled")
        assert enrolled["pod"] == "apps/client"
        assert enrolled["netns"] == f"/run/netns/{the_pods['client']['netns']}"
        status = await agent_status(cluster, "node-2")
        assert (status["enrolled"], status["failed"]) == (["apps/server"], {})
        assert status["ztunnel"] == {"connected": True}
        assert status["cni"]["installed"] is True, status["cni"]
        conflist = (
            Path(cluster.state_dir) / "nodes" / "node-2" / "net.d" / status["cni"]["conflist"]
        )
        plugins = json.loads(conflist.read_text())["plugins"]
        assert [p["type"] for p in plugins] == ["ambit-local", "ambit-cni"]
        assert os.access(conflist.parent.parent / "bin" / "ambit-cni", os.X_OK)
        # The plugin's ADD named the pod the way a kubelet does (CNI_CONTAINERID).
        recorded = {r["name"]: r for r in await agent_records(cluster, "node-2")}
        uid = recorded["server"]["uid"]
        assert recorded["server"]["container_id"] == f"apps_server_{uid}"
        assert await capture_chains(the_pods["client"]["netns"])

        marker = "marker-" + secrets.token_hex(6)
        async with capture(the_pods["client"]["netns"]) as frames:
            status_code = await http_status(cluster, "apps", "client", f"http://server/{marker}")
            assert status_code == "404"  # reached the server
        assert marker.encode() not in frames, "plaintext left the meshed client"
        assert b"\x17\x03\x03" in frames  # TLS application data
        (line,) = await wait_inbound(cluster, 0)
        assert (line["src.identity"], line["dst.identity"]) == (CLIENT, SERVER)


async def test_labelled_later_no_restart(cluster: Cluster) -> None:
    """Pods that started outside the mesh are meshed in place when their namespace is
    labelled: the plugin let them pass without asking the agent, which finds each by a
    process in the pod's cgroup (``pod<uid>``, as a kubelet makes), as on a node; no
    process restarts, no address changes."""
    with trio.fail_after(90):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(PLAIN)))
        before = await pods(cluster)
        assert await agent_events(cluster, "node-1", "pod_enrolled") == []
        await apply(cluster, "ns.yaml", AMBIENT)

        async def captured() -> bool:
            return all(p["captured"] is True for p in (await pods(cluster)).values())

        assert await eventually(captured, seconds=CHANGES_SECONDS + 1), await pods(cluster)
        after = await pods(cluster)
        assert {n: (p["pid"], p["ip"]) for n, p in after.items()} == {
            n: (p["pid"], p["ip"]) for n, p in before.items()
        }
        for node, pod in (("node-1", "apps/client"), ("node-2", "apps/server")):
            enrolled: list[dict[str, Any]] = []

            async def logged(node: str = node) -> bool:
                # ztunnel shows the pod captured as soon as it has it; the agent's line
                # follows its answer, through the agent's log file.
                nonlocal enrolled
                enrolled = await agent_events(cluster, node, "pod_enrolled")
                return bool(enrolled)

            assert await eventually(logged, seconds=10), node
            assert [e["pod"] for e in enrolled] == [pod]
            assert str(enrolled[0]["netns"]).startswith("/proc/"), enrolled  # by its process
        assert await curl_status("http://server/", after["client"]["netns"]) == "200"
        (line,) = await wait_inbound(cluster, 0)
        assert (line["src.identity"], line["dst.identity"]) == (CLIENT, SERVER)


async def test_agent_killed_traffic_untouched(cluster: Cluster) -> None:
    """SIGKILL both agents: an open connection carries on and new ones are served (the
    rules stay in the pods, ztunnel keeps its pods); the cluster starts the agents again,
    they hand ztunnel the same pods (no pod set up again) and say they are in sync."""
    echo = ECHO_POD.replace("SCRIPT", json.dumps(ECHO_SERVER))
    with trio.fail_after(120):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT, echo)))
        the_pods = await pods(cluster)
        client_netns = the_pods["client"]["netns"]
        captured_before = len(await cluster.ztunnel_events("node-2", "pod_captured"))
        async with held_connection(client_netns, the_pods["echo"]["ip"]) as carry_on:
            old = [await kill_component(cluster, f"node-agent/{n}") for n in ("node-1", "node-2")]
            for _ in range(5):  # while the agents are gone
                assert await curl_status("http://server/", client_netns) == "200"

            async def restarted() -> bool:
                now = await components(cluster)
                return all(
                    now[f"node-agent/{n}"]["restarts"] == 1
                    and now[f"node-agent/{n}"]["status"] == "Running"
                    for n in ("node-1", "node-2")
                )

            assert await eventually(restarted, seconds=10), await components(cluster)

            async def synced() -> bool:
                return all(
                    [
                        len(await agent_events(cluster, n, "node_agent_synced")) == 2
                        for n in ("node-1", "node-2")
                    ]
                )

            assert await eventually(synced, seconds=10), "the agents did not sync again"
            assert b"echoed pong" in await carry_on()
        now = await components(cluster)
        assert [now[f"node-agent/{n}"]["pid"] for n in ("node-1", "node-2")] != old
        assert (now["ztunnel/node-1"]["restarts"], now["ztunnel/node-2"]["restarts"]) == (0, 0)
        assert len(await cluster.ztunnel_events("node-2", "pod_captured")) == captured_before
        count = len(await inbound(cluster))
        assert await curl_status("http://server/", client_netns) == "200"
        (line,) = await wait_inbound(cluster, count)
        assert line["src.identity"] == CLIENT
        assert {p["captured"] for p in (await pods(cluster)).values()} == {True}

        # As an operator restarts it: stopped, started, in sync again; traffic untouched.
        async def agent_row() -> dict[str, Any]:
            rows = await cluster.get("components")
            return next(c for c in rows if c["name"] == "node-agent/node-2")

        crashed = (await agent_row())["restarts"]  # the kill above
        result = await cluster.ambit("restart", "node-agent/node-2")
        assert result.returncode == 0, result.stderr.decode()
        assert await curl_status("http://server/", client_netns) == "200"
        agent = await agent_row()
        assert agent["age"] < 10, agent  # a new process: its age, as a rollout's new pod's
        assert agent["restarts"] == crashed, agent  # a restart asked for is not counted

        async def synced_again() -> bool:
            return len(await agent_events(cluster, "node-2", "node_agent_synced")) == 3

        assert await eventually(synced_again, seconds=10), "node-2's agent did not sync"
        assert len(await cluster.ztunnel_events("node-2", "pod_captured")) == captured_before
