"""The node agent with local mode's source: the objects file followed as a watch, a pod
announced (ADD) while outside the mesh captured from its record once its namespace is
labelled, a capture failure retried and shown, readiness without a CNI plugin."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from k8s.sources.watch import Change, Delete, Listed, Put
from mesh.commands import CommandFailed
from node.agent import AgentConfig, NodeAgent
from node.sources import FileSource, OnChanges, diff, select

AMBIENT = {"ambit.io/dataplane-mode": "ambient"}


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` is true, checked every 10 ms."""
    for _ in range(1000):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition never became true")


def pod(name: str, node: str = "node-1", uid: str = "", **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"namespace": "shop", "name": name, "uid": uid or f"u-{name}",
                     "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": "default"},
        "status": {"phase": "Running", "podIP": "10.244.0.20"},
    }  # fmt: skip


def namespace(labels: Mapping[str, str]) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": "shop", "labels": dict(labels)}}


def write(directory: Path, *documents: Mapping[str, Any]) -> None:
    tmp = directory / "cluster.json.tmp"
    tmp.write_text("\n---\n".join(json.dumps(d) for d in documents))
    tmp.rename(directory / "cluster.json")


def test_the_node_takes_its_own_pods_and_every_namespace_and_changes_are_diffs() -> None:
    docs = [pod("web"), pod("db", node="node-2"), namespace({})]
    pods, namespaces = select(docs, "node-1")
    assert list(pods) == [("shop", "web")]
    assert list(namespaces) == [("", "shop")]
    changed = {("shop", "web"): pod("web", app="web"), ("shop", "new"): pod("new")}
    assert diff(pods, changed) == (
        Put(("shop", "web"), changed[("shop", "web")]), Put(("shop", "new"), pod("new"))
    )  # fmt: skip
    assert diff(pods, {}) == (Delete(("shop", "web"), pod("web"), synthesized=True),)


async def test_the_file_source_follows_the_objects_file_as_a_watch(tmp_path: Path) -> None:
    source = FileSource([tmp_path], "node-1", poll=0.01)
    got: list[Change] = []

    def on_change(changes: tuple[Change, ...]) -> None:
        got.extend(changes)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.follow_pods, on_change)
            await trio.sleep(0.1)
            assert got == []  # no file yet: nothing is listed
            write(tmp_path, pod("web"), pod("db", node="node-2"))
            await until(lambda: Listed() in got)
            assert got == [Put(("shop", "web"), pod("web")), Listed()]
            write(tmp_path, pod("db", node="node-2"))
            await until(lambda: len(got) >= 3)
            assert got[2] == Delete(("shop", "web"), pod("web"), synthesized=True)
            nursery.cancel_scope.cancel()


async def test_the_pods_and_namespaces_followers_share_one_read_of_each_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FileSource([tmp_path], "node-1", poll=0.01)
    reads = 0
    read = source._read

    def counted() -> list[Mapping[str, Any]] | None:
        nonlocal reads
        reads += 1
        return read()

    monkeypatch.setattr(source, "_read", counted)
    pods: list[Change] = []
    namespaces: list[Change] = []
    write(tmp_path, pod("web"), namespace(AMBIENT))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.follow_pods, pods.extend)
            nursery.start_soon(source.follow_namespaces, namespaces.extend)
            await until(lambda: Listed() in pods and Listed() in namespaces)
            assert reads == 1
            write(tmp_path, pod("web"), pod("db"), namespace(AMBIENT))
            await until(lambda: len(pods) == 3)
            await trio.sleep(0.05)  # both followers have polled the new version
            assert reads == 2
            nursery.cancel_scope.cancel()


async def test_the_file_source_answers_the_agents_gets(tmp_path: Path) -> None:
    write(tmp_path, pod("web"), namespace(AMBIENT))
    source = FileSource([tmp_path], "node-1")
    assert await source.request("GET", "/api/v1/namespaces/shop/pods/web") == (200, pod("web"))
    assert await source.request("GET", "/api/v1/namespaces/shop") == (200, namespace(AMBIENT))
    assert (await source.request("GET", "/api/v1/namespaces/shop/pods/nope"))[0] == 404
    write(tmp_path, pod("web"))  # a namespace made by using it: no labels
    status, body = await source.request("GET", "/api/v1/namespaces/shop")
    assert (status, body["metadata"]) == (200, {"name": "shop"})
    assert (await source.request("PATCH", "/api/v1/namespaces/shop"))[0] == 404


class FakeSource:
    def __init__(self) -> None:
        self.pods: OnChanges | None = None
        self.namespaces: OnChanges | None = None

    async def follow_pods(self, on_change: OnChanges) -> None:
        self.pods = on_change
        await trio.sleep_forever()

    async def follow_namespaces(self, on_change: OnChanges) -> None:
        self.namespaces = on_change
        await trio.sleep_forever()


class FakeZtunnel:
    connected = True

    def __init__(self) -> None:
        self.pods: dict[str, str] = {}

    async def add(self, pod: Mapping[str, Any], netns: str) -> None:
        self.pods[str(pod["uid"])] = netns

    async def remove(self, uid: str) -> None:
        self.pods.pop(uid, None)

    def synced(self) -> None:
        pass


class NoApi:
    async def request(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return 404, {}


def agent_for(tmp_path: Path, failures: list[str]) -> tuple[NodeAgent, FakeSource, FakeZtunnel]:
    source, ztunnel = FakeSource(), FakeZtunnel()

    async def install(netns: str) -> None:
        if failures:
            raise CommandFailed(failures.pop(0))

    async def remove(netns: str) -> None:
        pass

    config = AgentConfig("node-1", tmp_path / "agent", excluded=frozenset(), cni_install=False)
    agent = NodeAgent(config, source=source, requests=NoApi(), ztunnel=ztunnel,
                      install_rules=install, remove_rules=remove)  # fmt: skip
    return agent, source, ztunnel


def add_request(netns: Path) -> dict[str, Any]:
    return {"command": "ADD", "containerId": "c", "netns": str(netns), "ifname": "eth0",
            "pod": {"namespace": "shop", "name": "web", "uid": "u-web"},
            "ips": ["10.244.0.20"]}  # fmt: skip


async def start(agent: NodeAgent, source: FakeSource, ns_labels: Mapping[str, str]) -> None:
    await until(lambda: source.pods is not None and source.namespaces is not None)
    assert source.pods is not None
    assert source.namespaces is not None
    source.pods((Put(("shop", "web"), pod("web")), Listed()))
    source.namespaces((Put(("", "shop"), namespace(ns_labels)), Listed()))


async def test_a_pod_added_outside_the_mesh_is_captured_from_its_record_when_labelled(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    netns = tmp_path / "netns-web"
    netns.touch()
    agent, source, ztunnel = agent_for(tmp_path, [])
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await start(agent, source, {})
        await trio.sleep(1)
        assert agent.ready() == (True, "0 pods enrolled")  # no plugin to wait for
        answer = await agent.cni_add(add_request(netns))
        assert answer["result"] == "skipped"
        assert agent.records.get("u-web") is not None  # kept: it may be labelled later
        assert source.namespaces is not None
        source.namespaces((Put(("", "shop"), namespace(AMBIENT)),))
        await trio.sleep(1)
        assert ztunnel.pods == {"u-web": str(netns)}
        assert agent.status()["enrolled"] == ["shop/web"]
        nursery.cancel_scope.cancel()


async def test_a_pod_whose_capture_fails_is_retried_never_handed_and_says_why(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    netns = tmp_path / "netns-web"
    netns.touch()
    agent, source, ztunnel = agent_for(tmp_path, ["iptables-restore: exit status 1"] * 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await start(agent, source, AMBIENT)
        answer = await agent.cni_add(add_request(netns))
        assert "capture rules could not be installed" in answer["error"]
        assert ztunnel.pods == {}  # never handed to ztunnel uncaptured
        assert agent.status()["failed"] == {
            "shop/web": "capture rules could not be installed: iptables-restore: exit status 1"
        }
        await trio.sleep(30)  # retried with backoff until the rules go in
        assert ztunnel.pods == {"u-web": str(netns)}
        assert agent.status()["failed"] == {}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("cni_install", [True, False])
async def test_readiness_waits_for_the_plugin_only_when_it_installs_one(
    tmp_path: Path, cni_install: bool
) -> None:
    agent, _, _ = agent_for(tmp_path, [])
    agent.config.cni_install = cni_install
    agent.listed.pods = agent.listed.namespaces = True
    assert agent.ready()[0] is (not cni_install)
