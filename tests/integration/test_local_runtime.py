"""Local mode's container runtime with the real ``ambit-cni``: a node's conflist (local
mode's own plugin first, ``ambit-cni`` installed and appended by ``node.cni_install`` as
the agent does), the stand-in API server (:mod:`k8s.localapi`, HTTPS with its token)
serving the pods and namespaces, and a stand-in agent on ``cni.sock`` that records what
the plugin asks. No root: nothing here touches a network namespace."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from k8s.localapi import LocalApi
from k8s.localcni import PRIMARY_FILE, CniPod, CniRuntime, NodeChain, primary_conflist
from node.cni_config import PluginSettings
from node.cni_install import install_binary, install_config, plugin_source
from node.cni_plugin import ApiServer, Deadline, Kubeconfig, TryAgain
from tests.node.chain import TestAgent
from tests.waiting import wait_until

AMBIENT = {"ambit.io/dataplane-mode": "ambient"}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}}}  # fmt: skip


def pod(ns: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "uid": uid}}  # fmt: skip


@dataclass
class Node:
    chain: NodeChain
    api: LocalApi
    agent: TestAgent
    runtime: CniRuntime


async def until(condition: Callable[[], bool]) -> None:
    await wait_until(condition, seconds=20)


@pytest.fixture
async def node(tmp_path: Path, short_dir: Path) -> AsyncIterator[Node]:
    chain = NodeChain(tmp_path / "net.d", tmp_path / "bin")
    chain.conf_dir.mkdir()
    (chain.conf_dir / PRIMARY_FILE).write_bytes(primary_conflist())
    api = LocalApi(tmp_path / "localapi")
    agent = TestAgent(short_dir / "cni.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        # What the node agent does at start: the plugin, its kubeconfig, the conflist entry.
        install_binary(plugin_source(), chain.bin_dir)
        kubeconfig = chain.conf_dir / "ambit-kubeconfig"
        kubeconfig.write_bytes(api.kubeconfig_file.read_bytes())
        settings = PluginSettings(agent_socket=str(agent.path), kubeconfig=str(kubeconfig),
                                  exclude_namespaces=(), timeout_seconds=3)  # fmt: skip
        install_config(chain.conf_dir, tmp_path / "state", settings)
        yield Node(chain, api, agent, CniRuntime(lambda _: chain))
        nursery.cancel_scope.cancel()


async def test_a_meshed_pod_starts_once_the_agent_enrolled_it_and_del_follows_it(
    node: Node,
) -> None:
    node.api.update([namespace("shop", AMBIENT), pod("shop", "web", "u-web")])
    web = CniPod("node-1", "shop", "web", "u-web", "/run/netns/web", "10.244.0.20", 16)
    started = trio.Event()

    async def kubelet() -> None:
        await node.runtime.wait_added("u-web", "10.244.0.20")
        started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kubelet)
        node.runtime.update(nursery, [web])
        # No agent yet: the plugin fails the ADD (code 11) and the runtime says why.
        await until(lambda: "node agent" in " ".join(node.runtime.pending()))
        (line,) = node.runtime.pending()
        assert line.startswith("pod shop/web: its CNI ADD has not succeeded: ambit-cni ADD")
        assert "(code 11)" in line, line
        assert not started.is_set()
        await nursery.start(node.agent.serve)
        with trio.fail_after(20):
            await started.wait()
        assert node.runtime.pending() == []
        (add,) = [r for r in node.agent.requests if r["command"] == "ADD"]
        assert add["pod"] == {"namespace": "shop", "name": "web", "uid": "u-web"}
        assert (add["netns"], add["ips"]) == ("/run/netns/web", ["10.244.0.20"])
        assert add["containerId"] == "shop_web_u-web"
        node.runtime.update(nursery, [])
        await until(lambda: "DEL" in node.agent.commands())
        nursery.cancel_scope.cancel()


async def test_a_pod_out_of_the_mesh_starts_without_asking_the_agent(node: Node) -> None:
    node.api.update([pod("plain", "legacy", "u-legacy")])  # its namespace only implied
    legacy = CniPod("node-1", "plain", "legacy", "u-legacy", "/run/netns/l", "10.244.0.21", 16)
    async with trio.open_nursery() as nursery:
        node.runtime.update(nursery, [legacy])  # the agent never listens
        with trio.fail_after(20):
            await node.runtime.wait_added("u-legacy", "10.244.0.21")
        nursery.cancel_scope.cancel()
    assert node.agent.requests == []


async def test_an_add_before_the_api_has_the_pod_is_retried_until_it_has(node: Node) -> None:
    web = CniPod("node-1", "shop", "web", "u-web", "/run/netns/web", "10.244.0.20", 16)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.agent.serve)
        node.runtime.update(nursery, [web])
        await until(lambda: "404" in " ".join(node.runtime.pending()))
        node.api.update([namespace("shop", AMBIENT), pod("shop", "web", "u-web")])
        with trio.fail_after(20):
            await node.runtime.wait_added("u-web", "10.244.0.20")
        nursery.cancel_scope.cancel()
    assert node.agent.commands() == ["ADD"]


async def test_a_pod_made_again_waits_for_its_own_add_not_its_predecessors(node: Node) -> None:
    node.api.update([pod("plain", "app", "u-1")])
    first = CniPod("node-1", "plain", "app", "u-1", "/run/netns/a", "10.244.0.30", 16)
    async with trio.open_nursery() as nursery:
        node.runtime.update(nursery, [first])
        with trio.fail_after(20):
            await node.runtime.wait_added("u-1", "10.244.0.30")
        second = CniPod("node-1", "plain", "app", "u-2", "/run/netns/b", "10.244.0.31", 16)
        node.runtime.update(nursery, [second])  # the API still has u-1: ADD fails on the uid
        with trio.move_on_after(1):
            await node.runtime.wait_added("u-2", "10.244.0.31")
            raise AssertionError("the new pod started on its predecessor's ADD")
        assert "has uid u-1, not u-2" in " ".join(node.runtime.pending())
        node.api.update([pod("plain", "app", "u-2")])
        with trio.fail_after(20):
            await node.runtime.wait_added("u-2", "10.244.0.31")
        nursery.cancel_scope.cancel()


async def test_the_stand_in_api_server_wants_its_token_and_is_checked_by_its_ca(
    node: Node,
) -> None:
    node.api.update([namespace("shop", AMBIENT)])
    config = json.loads(node.api.kubeconfig_file.read_text())
    good = Kubeconfig(str(node.api.kubeconfig_file))
    api = ApiServer(good, Deadline(5))
    try:
        got = await trio.to_thread.run_sync(api.get, "/api/v1/namespaces/shop")
        assert got["metadata"]["labels"] == AMBIENT
        with pytest.raises(TryAgain, match="answered 404"):
            await trio.to_thread.run_sync(api.get, "/api/v1/namespaces/shop/pods/none")
    finally:
        api.close()

    config["users"][0]["user"]["token"] = "not-the-token"
    wrong = node.api.directory / "wrong-token"
    wrong.write_text(json.dumps(config))
    api = ApiServer(Kubeconfig(str(wrong)), Deadline(5))
    with structlog.testing.capture_logs() as logs, pytest.raises(TryAgain, match="answered 401"):
        await trio.to_thread.run_sync(api.get, "/api/v1/namespaces/shop")
    api.close()
    assert [e["event"] for e in logs] == ["local_api_unauthorized"]

    # A client that does not trust the stand-in's CA does not get through the handshake.
    port = node.api.port
    assert port is not None
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        await trio.to_thread.run_sync(_handshake, context, port)


def _handshake(context: ssl.SSLContext, port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        context.wrap_socket(sock, server_hostname="127.0.0.1").close()
