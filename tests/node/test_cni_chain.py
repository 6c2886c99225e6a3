"""ambit-cni last in a real CNI chain (bridge + host-local), run by cnitool as a
container runtime runs it, in a network namespace of the test's own, asking the
real API server about real Pods and a stand-in node agent about meshed ones."""

from __future__ import annotations

import json
import time

import pytest
import trio

from tests.kube.client import KubeAdmin, Obj
from tests.kube.kubelet import pod
from tests.node.chain import Chain, Ran, TestAgent

pytestmark = [pytest.mark.root, pytest.mark.kube]

AMBIT, ISTIO = "ambit.io/dataplane-mode", "istio.io/dataplane-mode"


async def label_namespace(admin: KubeAdmin, ns: str, labels: dict[str, str]) -> None:
    await admin.patch("v1", "Namespace", ns, {"metadata": {"labels": labels}})


async def make_pod(
    admin: KubeAdmin, ns: str, name: str, labels: dict[str, str] | None = None
) -> Obj:
    return await admin.create(pod(ns, name, labels=labels))


def sandbox_ips(result: Obj) -> list[str]:
    interfaces = result["interfaces"]
    return [
        ip["address"].split("/")[0]
        for ip in result["ips"]
        if interfaces[ip["interface"]].get("sandbox")
    ]


def assert_error(ran: Ran, code: int) -> Obj:
    assert ran.returncode != 0, ran
    error: Obj = ran.json()
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert error["code"] == code, error
    return error


async def test_a_meshed_pods_add_reaches_the_agent(
    chain: Chain, agent: TestAgent, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    await label_namespace(kube_admin, kube_ns, {AMBIT: "ambient"})
    cart = await make_pod(kube_admin, kube_ns, "cart-0")
    with trio.fail_after(60):
        added = await chain.cnitool("add", cart)
    assert added.returncode == 0, added
    result = added.json()
    ips = sandbox_ips(result)
    assert len(ips) == 1
    assert ips[0].startswith(chain.subnet.rsplit(".", 2)[0])
    [request] = agent.requests
    assert request["command"] == "ADD"
    assert request["netns"] == chain.netns_path
    assert request["ifname"] == "eth0"
    assert request["containerId"].startswith("cnitool-")
    meta = cart["metadata"]
    assert request["pod"] == {"namespace": kube_ns, "name": "cart-0", "uid": meta["uid"]}
    assert request["ips"] == ips
    # The address is really the pod's: the bridge put it on eth0 in the namespace.
    shown = await trio.run_process(
        ["ip", "-n", chain.netns, "-j", "addr", "show", "eth0"], capture_stdout=True
    )
    assert ips[0] in {a["local"] for a in json.loads(shown.stdout)[0]["addr_info"]}

    # Its stdout is the bridge's result, untouched: run alone with it as prevResult.
    with trio.fail_after(60):
        alone = await chain.plugin("ADD", chain.plugin_conf(result), cart)
    assert alone.returncode == 0, alone
    assert alone.json() == result

    with trio.fail_after(60):
        checked = await chain.cnitool("check", cart)
        deleted = await chain.cnitool("del", cart)
    assert checked.returncode == 0, checked
    assert deleted.returncode == 0, deleted
    assert agent.commands() == ["ADD", "ADD", "CHECK", "DEL"]
    assert agent.requests[-1]["pod"]["uid"] == meta["uid"]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.1.0"])
async def test_chains_of_every_supported_spec_version(
    chain: Chain, agent: TestAgent, kube_admin: KubeAdmin, kube_ns: str, version: str
) -> None:
    chain.use_version(version)
    await label_namespace(kube_admin, kube_ns, {AMBIT: "ambient"})
    cart = await make_pod(kube_admin, kube_ns, "cart")
    with trio.fail_after(60):
        added = await chain.cnitool("add", cart)
    assert added.returncode == 0, added
    result = added.json()
    assert result["cniVersion"] == version
    assert agent.requests[0]["ips"] == sandbox_ips(result)
    commands = ["ADD"]
    if version != "0.3.1":  # CHECK came with 0.4.0
        with trio.fail_after(60):
            checked = await chain.cnitool("check", cart)
        assert checked.returncode == 0, checked
        commands.append("CHECK")
    if version == "1.1.0":  # STATUS came with 1.1.0: ready, whatever the agent
        with trio.fail_after(60):
            status = await chain.cnitool("status", cart)
        assert status.returncode == 0, status
    with trio.fail_after(60):
        deleted = await chain.cnitool("del", cart)
    assert deleted.returncode == 0, deleted
    assert agent.commands() == [*commands, "DEL"]


async def test_a_pod_outside_the_mesh_passes_without_the_agent(
    chain: Chain, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    web = await make_pod(kube_admin, kube_ns, "web")
    assert not chain.agent_socket.exists()
    with trio.fail_after(60):
        added = await chain.cnitool("add", web)
    assert added.returncode == 0, added
    assert len(sandbox_ips(added.json())) == 1
    with trio.fail_after(60):
        deleted = await chain.cnitool("del", web)
    assert deleted.returncode == 0, deleted


async def test_a_meshed_pod_fails_with_the_agent_absent(
    chain: Chain, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    await label_namespace(kube_admin, kube_ns, {AMBIT: "ambient"})
    cart = await make_pod(kube_admin, kube_ns, "cart")
    with trio.fail_after(60):
        added = await chain.cnitool("add", cart)
        alone = await chain.plugin("ADD", chain.plugin_conf({"cniVersion": "1.0.0"}), cart)
    assert added.returncode != 0
    assert "not reachable" in added.stderr
    error = assert_error(alone, 11)
    assert "ambit node agent" in error["msg"]
    assert "not reachable" in error["msg"]
    assert f"{kube_ns}/cart" in error["details"]
    # DEL always succeeds, agent or not.
    with trio.fail_after(60):
        deleted = await chain.cnitool("del", cart)
    assert deleted.returncode == 0, deleted


async def test_a_meshed_pod_fails_when_the_agent_refuses(
    chain: Chain, agent: TestAgent, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    await label_namespace(kube_admin, kube_ns, {AMBIT: "ambient"})
    cart = await make_pod(kube_admin, kube_ns, "cart")
    agent.answer = {"error": "iptables-restore failed in the pod's namespace"}
    with trio.fail_after(60):
        added = await chain.cnitool("add", cart)
    assert added.returncode != 0
    assert "iptables-restore failed" in added.stderr
    with trio.fail_after(60):
        alone = await chain.plugin("ADD", chain.plugin_conf({"cniVersion": "1.0.0"}), cart)
    error = assert_error(alone, 11)
    assert error["msg"] == (
        f"the ambit node agent could not enroll pod {kube_ns}/cart: "
        "iptables-restore failed in the pod's namespace"
    )
    agent.answer = {"result": "maybe"}
    with trio.fail_after(60):
        odd = await chain.plugin("ADD", chain.plugin_conf({"cniVersion": "1.0.0"}), cart)
    assert "gave no result" in assert_error(odd, 11)["msg"]


async def test_a_hanging_agent_fails_the_add_within_the_timeout(
    chain: Chain, agent: TestAgent, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    await label_namespace(kube_admin, kube_ns, {AMBIT: "ambient"})
    cart = await make_pod(kube_admin, kube_ns, "cart")
    agent.hang = True
    conf = chain.plugin_conf({"cniVersion": "1.0.0"}, timeoutSeconds=1)
    start = time.monotonic()
    with trio.fail_after(60):
        alone = await chain.plugin("ADD", conf, cart)
    elapsed = time.monotonic() - start
    error = assert_error(alone, 11)
    assert "did not answer within 1 s" in error["msg"]
    assert elapsed < 1 + 10  # the bound, with generous slack for a loaded machine
    assert agent.commands() == ["ADD"]


@pytest.mark.parametrize(
    ("pod_labels", "namespace_labels"),
    [
        ({AMBIT: "none"}, {AMBIT: "ambient"}),  # opted out in a meshed namespace
        ({ISTIO: "none"}, {ISTIO: "ambient"}),
        ({}, {AMBIT: "none", ISTIO: "ambient"}),  # ambit's label wins over Istio's
    ],
)
async def test_pods_opted_out_pass_without_the_agent_asked(
    chain: Chain,
    agent: TestAgent,
    kube_admin: KubeAdmin,
    kube_ns: str,
    pod_labels: dict[str, str],
    namespace_labels: dict[str, str],
) -> None:
    await label_namespace(kube_admin, kube_ns, namespace_labels)
    web = await make_pod(kube_admin, kube_ns, "web", pod_labels)
    with trio.fail_after(60):
        added = await chain.cnitool("add", web)
    assert added.returncode == 0, added
    assert [c for c in agent.commands() if c != "DEL"] == []


@pytest.mark.parametrize(
    ("pod_labels", "namespace_labels"),
    [({}, {ISTIO: "ambient"}), ({ISTIO: "ambient"}, {}), ({AMBIT: "ambient"}, {})],
)
async def test_istio_and_pod_labels_mesh_a_pod(
    chain: Chain,
    agent: TestAgent,
    kube_admin: KubeAdmin,
    kube_ns: str,
    pod_labels: dict[str, str],
    namespace_labels: dict[str, str],
) -> None:
    await label_namespace(kube_admin, kube_ns, namespace_labels)
    cart = await make_pod(kube_admin, kube_ns, "cart", pod_labels)
    with trio.fail_after(60):
        added = await chain.cnitool("add", cart)
    assert added.returncode == 0, added
    assert agent.commands() == ["ADD"]


async def test_an_unknown_pod_is_retried_later(
    chain: Chain, agent: TestAgent, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    await label_namespace(kube_admin, kube_ns, {AMBIT: "ambient"})
    ghost = {"metadata": {"namespace": kube_ns, "name": "ghost", "uid": "u-0"}}
    with trio.fail_after(60):
        alone = await chain.plugin("ADD", chain.plugin_conf({"cniVersion": "1.0.0"}), ghost)
    error = assert_error(alone, 11)
    assert "answered 404" in error["msg"]
    assert agent.requests == []


async def test_version_and_bad_input(chain: Chain) -> None:
    with trio.fail_after(60):
        version = await chain.plugin("VERSION", b'{"cniVersion": "1.0.0"}')
        garbled = await chain.plugin("ADD", b"{cniVersion")
        old = await chain.plugin("ADD", chain.plugin_conf({}, cniVersion="0.2.0"))
        unknown = await chain.plugin("FROB", chain.plugin_conf({}))
    assert version.returncode == 0
    assert version.json() == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert "decode" in assert_error(garbled, 6)["msg"]
    assert assert_error(old, 1)["cniVersion"] == "1.1.0"
    assert "CNI_COMMAND" in assert_error(unknown, 4)["msg"]
