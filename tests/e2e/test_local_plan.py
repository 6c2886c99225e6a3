"""Local mode's pure parts: placement, addresses, endpoints, rules, hosts files, names.

No root needed. (They live beside the e2e tests because they test the same
package; they are plain unit tests.)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from k8s.local.config import ClusterConfig
from k8s.local.errors import LocalClusterError
from k8s.local.hooks import LocalHooks, LocalSnapshot, NodeView
from k8s.local.objects import ManifestProblem, load_objects
from k8s.local.plan import Allocation, plan_cluster, render_hosts, render_service_rules
from k8s.localmesh import default_hooks
from k8s.manifests import K8sObject

CONFIG = ClusterConfig(
    Path("/nonexistent"), "1a2b",
    ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.96.0.0/16"),
)  # fmt: skip


def pod(name: str, namespace: str = "demo", node: str = "", labels: str = "{app: web}") -> str:
    node_line = f"  nodeName: {node}\n" if node else ""
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace},"
        f" labels: {labels}}}\nspec:\n{node_line}"
        "  containers: [{name: c, command: [sleep, '1'],"
        " ports: [{containerPort: 8080, name: http}]}]\n"
    )


def service(name: str = "web", namespace: str = "demo", target: str = "8080") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: {target}}}]\n"
    )


def load(tmp_path: Path, *documents: str) -> list[K8sObject]:
    path = tmp_path / "m.yaml"
    path.write_text("\n---\n".join(documents))
    return [d.obj for d in load_objects([path]) if d.obj is not None]


def test_pods_without_a_node_are_spread_and_keep_their_place(tmp_path: Path) -> None:
    objects = load(tmp_path, pod("a"), pod("b"), pod("c"), pod("d", node="edge"))
    plan = plan_cluster(CONFIG, objects, Allocation())
    nodes = {p.spec.name: p.node for p in plan.pods}
    assert nodes == {"a": "node-1", "b": "node-2", "c": "node-1", "d": "edge"}
    assert [n.name for n in plan.nodes] == ["edge", "node-1", "node-2"]
    assert len({n.ip for n in plan.nodes} | {p.ip for p in plan.pods}) == 7

    # Removing "a" moves no one; a new pod takes a fresh address, not a's.
    again = plan_cluster(
        CONFIG,
        [o for o in objects if o.name != "a"] + load(tmp_path, pod("e")),
        plan.allocation,
    )
    before = {p.spec.name: (p.node, p.ip) for p in plan.pods}
    after = {p.spec.name: (p.node, p.ip) for p in again.pods}
    assert all(after[name] == before[name] for name in ("b", "c", "d"))
    assert after["e"][1] not in {ip for _, ip in before.values()}
    assert [n.name for n in again.nodes] == ["edge", "node-1", "node-2"]


def test_endpoints_follow_selectors_namespaces_readiness_and_named_ports(tmp_path: Path) -> None:
    objects = load(
        tmp_path, pod("a"), pod("b"), pod("c", labels="{app: other}"), pod("x", namespace="other"),
        service(), service("named", target="http"),
    )  # fmt: skip
    plan = plan_cluster(CONFIG, objects, Allocation())
    ips = {p.spec.name: p.ip for p in plan.pods}
    web, named = plan.services
    assert {e.ip for e in web.ports[0].endpoints} == {ips["a"], ips["b"]}
    assert {(e.ip, e.port) for e in named.ports[0].endpoints} == {
        (ips["a"], 8080),
        (ips["b"], 8080),
    }
    assert web.vip != named.vip
    assert ipaddress.IPv4Address(web.vip) in CONFIG.service_cidr

    only_a = plan_cluster(CONFIG, objects, plan.allocation, ready={("demo", "a")})
    assert [e.ip for e in only_a.services[0].ports[0].endpoints] == [ips["a"]]
    assert only_a.services[0].vip == web.vip


def test_service_rules_balance_at_random_and_refuse_the_rest(tmp_path: Path) -> None:
    objects = load(tmp_path, pod("a"), pod("b"), pod("c"), service())
    plan = plan_cluster(CONFIG, objects, Allocation())
    rules = render_service_rules(CONFIG, plan.services).splitlines()
    dnat = [r for r in rules if "DNAT" in r]
    assert len(dnat) == 3
    assert "--probability 0.33333" in dnat[0]
    assert "--probability 0.50000" in dnat[1]
    assert "statistic" not in dnat[2]
    assert all(f"-d {plan.services[0].vip}/32 -p tcp -m tcp --dport 80" in r for r in dnat)
    assert f"-A AMBIT-SERVICES -d {CONFIG.service_cidr} -j REJECT" in rules
    assert rules.count("COMMIT") == 2


def test_hosts_files_give_short_names_only_in_the_pods_namespace(tmp_path: Path) -> None:
    objects = load(tmp_path, pod("a"), pod("x", namespace="other"), service())
    plan = plan_cluster(CONFIG, objects, Allocation())
    vip = plan.services[0].vip
    a, x = sorted(plan.pods, key=lambda p: p.spec.namespace)
    assert f"{vip}\tweb.demo.svc.cluster.local web.demo.svc web.demo web" in render_hosts(
        a, plan.services
    )
    assert f"{vip}\tweb.demo.svc.cluster.local web.demo.svc web.demo\n" in render_hosts(
        x, plan.services
    )
    assert f"{x.ip}\tx" in render_hosts(x, plan.services)


def test_a_cluster_ip_outside_the_service_cidr_is_refused(tmp_path: Path) -> None:
    document = service().replace("spec:\n", "spec:\n  clusterIP: 10.1.2.3\n")
    with pytest.raises(
        ManifestProblem, match=r"spec.clusterIP: 10.1.2.3 is not in the service CIDR"
    ):
        plan_cluster(CONFIG, load(tmp_path, document), Allocation())
    fixed = document.replace("10.1.2.3", "10.96.7.7")
    assert plan_cluster(CONFIG, load(tmp_path, fixed), Allocation()).services[0].vip == "10.96.7.7"


def test_names_fit_linux_limits_and_carry_the_cluster_id() -> None:
    long_name = "a-very-long-pod-name-that-goes-on-and-on-and-on-forever"
    netns = CONFIG.pod_netns("some-long-namespace", long_name)
    assert len(netns) <= 60
    assert netns.startswith("amb-1a2b-some-long-namespace-")
    assert netns != CONFIG.pod_netns("some-long-namespace", long_name + "x")
    veth = CONFIG.veth_name(f"pod:ns/{long_name}")
    assert len(veth) <= 15
    assert veth.startswith("v1a2b")
    assert len(CONFIG.bridge) <= 15


def test_overlapping_cidrs_are_refused() -> None:
    with pytest.raises(LocalClusterError, match="overlaps"):
        ClusterConfig(
            Path("/x"),
            "0000",
            ipaddress.IPv4Network("10.0.0.0/8"),
            ipaddress.IPv4Network("10.96.0.0/16"),
        )


def test_local_mode_checks_of_its_own_name_the_file_and_field(tmp_path: Path) -> None:
    no_command = pod("a").replace("command: [sleep, '1'], ", "")
    with pytest.raises(
        ManifestProblem, match=r"m\.yaml: document 1 \(Pod demo/a\): spec\.containers\[0\]\.command"
    ):
        load(tmp_path, no_command)
    host = pod("a").replace("spec:\n", "spec:\n  hostNetwork: true\n")
    with pytest.raises(ManifestProblem, match=r"spec.hostNetwork: not supported in local mode"):
        load(tmp_path, host)


def test_empty_hooks_do_nothing() -> None:
    hooks = LocalHooks()
    assert hooks.on_cluster_started is None
    assert hooks.mesh_state is None
    assert (
        hooks.ztunnel_command(NodeView("node-1", "10.244.0.10", "amb-1a2b-node-1"), CONFIG) is None
    )
    hooks.on_objects_changed(LocalSnapshot(CONFIG, (), (), (), ()))  # accepted, ignored


def test_default_hooks_wire_in_the_mesh() -> None:
    """``ambit local-daemon`` runs the control plane, a ztunnel per node, and waits for capture."""
    hooks = default_hooks()
    assert hooks.on_cluster_started is not None
    assert hooks.mesh_state is not None
