"""``ambit install --node`` renders (``k8s.install_node``): every object valid for the
tested Kubernetes (strict), the command lines docs/node.md fixes, the values an operator
sets, and the DaemonSets' privileges: exactly the ones listed here and in
docs/node.md, so that a change to them is deliberate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from k8s import install, install_node
from k8s.install_node import AGENT, ZTUNNEL, NodeValues
from mesh.constants import SYSTEM_NAMESPACE
from tests.unit.test_install import KUBERNETES_VERSION, main

REPO = Path(__file__).resolve().parents[2]

SET = (
    "trustDomain=example.org", "image=registry.example/ambit:1.2", "logLevel=debug",
    "controlPlane=cp.mesh.svc", "cni.binDir=/var/lib/rancher/k3s/data/cni",
    "cni.confDir=/var/lib/rancher/k3s/agent/etc/cni/net.d",
    'excludeNamespaces=["kube-system","ambit-system","monitoring"]',
    "ztunnel.resources.limits.cpu=2", "nodeAgent.resources.requests.memory=64Mi",
    'tolerations=[{"key":"dedicated","operator":"Equal","value":"db","effect":"NoSchedule"}]',
    'nodeSelector={"pool":"mesh"}',
)  # fmt: skip
ZTUNNEL_PRIVILEGES = {
    "runAsUser 0",
    "capability NET_ADMIN",
    "capability SYS_ADMIN",
    "hostPath /var/run/ambit",
}
AGENT_PRIVILEGES = {
    "runAsUser 0",
    "hostNetwork",
    "hostPID",
    "capability NET_ADMIN",
    "capability SYS_ADMIN",
    "capability SYS_PTRACE",
    "hostPath /opt/cni/bin",
    "hostPath /etc/cni/net.d",
    "hostPath /var/run/ambit",
    "hostPath /var/run/netns",
}


def daemonset(name: str, values: NodeValues | None = None) -> dict[str, Any]:
    docs = install_node.manifests(values)
    return next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == name)


def privileges(doc: dict[str, Any]) -> set[str]:
    """What the DaemonSet's pods may do that a plain pod may not, as docs/node.md words it."""
    spec = doc["spec"]["template"]["spec"]
    out = {flag for flag in ("hostNetwork", "hostPID", "hostIPC") if spec.get(flag)}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        context = container.get("securityContext") or {}
        assert context["capabilities"]["drop"] == ["ALL"]
        out |= {f"capability {c}" for c in context["capabilities"].get("add", [])}
        out |= {"privileged"} if context.get("privileged") else set()
        out |= {"runAsUser 0"} if context.get("runAsUser") == 0 else set()
        out |= {f"hostPort {p['hostPort']}" for p in container.get("ports", []) if "hostPort" in p}
    out |= {f"hostPath {v['hostPath']['path']}" for v in spec["volumes"] if "hostPath" in v}
    return out


@pytest.mark.parametrize("settings", [(), SET], ids=["defaults", "set"])
def test_every_object_is_valid_for_the_tested_kubernetes(settings: tuple[str, ...]) -> None:
    for doc in install_node.manifests(install_node.values_from(list(settings))):
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == "1.36"


def test_the_cli_prints_the_node_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "--node"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == install_node.manifests()
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ServiceAccount", ZTUNNEL),
        ("ServiceAccount", AGENT),
        ("ClusterRole", AGENT),
        ("ClusterRoleBinding", AGENT),
        ("Role", AGENT),
        ("RoleBinding", AGENT),
        ("ValidatingAdmissionPolicy", "ambit-node-agent-own-pod"),
        ("ValidatingAdmissionPolicyBinding", "ambit-node-agent-own-pod"),
        ("DaemonSet", ZTUNNEL),
        ("DaemonSet", AGENT),
    ]
    assert all(d["metadata"].get("namespace", SYSTEM_NAMESPACE) == SYSTEM_NAMESPACE for d in docs)


def test_the_shorthands_and_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install", "--node", "--image", "r.example/ambit:2", "--trust-domain", "a.b"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == install_node.manifests(NodeValues(image="r.example/ambit:2", trust_domain="a.b"))
    assert main(["install", "--node", "--set", "replicas=2"]) == 2
    assert "unknown key 'replicas'" in capsys.readouterr().err


def test_an_object_merges_into_the_default_as_with_helm() -> None:
    values = install_node.values_from(['nodeSelector={"kubernetes.io/os":null,"pool":"a"}'])
    assert values.node_selector == {"pool": "a"}
    values = install_node.values_from(['tolerations=[{"operator":"Exists","effect":"NoExecute"}]'])
    assert values.tolerations == [{"operator": "Exists", "effect": "NoExecute"}]  # replaced


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('tolerations=[{"kee":"x"}]', "unknown toleration field kee"),
        ("tolerations=[1]", "must be a list of tolerations"),
        ('excludeNamespaces=["Kube System"]', "not namespace names: Kube System"),
        ("excludeNamespaces=kube-system", "is not JSON"),
        ('nodeSelector={"a":1}', "must be an object of label keys to values"),
        ("cni.binDir=opt/cni/bin", "must be an absolute path"),
        ("controlPlane=http://cp", "the control plane Service's host name"),
        ("imagePullPolicy=Sometimes", "Always, IfNotPresent or Never"),
    ],
)
def test_values_that_cannot_be_rendered_are_refused(setting: str, message: str) -> None:
    with pytest.raises(install.ValuesError, match=message):
        install_node.values_from([setting])


def test_ztunnel_runs_the_fixed_command_line() -> None:
    container = daemonset(ZTUNNEL)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "ambit", "--log-level", "info", "--log-format", "json",
        "ztunnel", "--node", "$(NODE_NAME)",
        "--control-plane", "ambit-controlplane.ambit-system.svc:15010",
        "--ca", "ambit-controlplane.ambit-system.svc:15012",
        "--token-file", "/var/run/secrets/ambit/tokens/token",
        "--trust-bundle", "/var/run/secrets/ambit/ca/root-cert.pem",
        "--pods-socket", "/var/run/ambit/ztunnel.sock", "--listen-ip", "0.0.0.0",
        "--trust-domain", "cluster.local", "--drain-seconds", "25",
    ]  # fmt: skip
    spec = daemonset(ZTUNNEL)["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > 25
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec
    volumes = {v["name"]: v for v in spec["volumes"]}
    token = volumes["ambit-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "ambit-ca"
    assert volumes["ambit-ca-root"]["configMap"]["name"] == "ambit-ca-root-cert"
    assert {p["containerPort"] for p in container["ports"]} == {15020, 15021}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    strategy = daemonset(ZTUNNEL)["spec"]["updateStrategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_agent_runs_the_fixed_command_line() -> None:
    values = install_node.values_from(list(SET))
    spec = daemonset(AGENT, values)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"] == [
        "ambit", "--log-level", "debug", "--log-format", "json",
        "node-agent", "--node", "$(NODE_NAME)",
        "--cni-bin-dir", "/host/opt/cni/bin", "--cni-conf-dir", "/host/etc/cni/net.d",
        "--host-cni-conf-dir", "/var/lib/rancher/k3s/agent/etc/cni/net.d",
        "--socket-dir", "/var/run/ambit", "--state-dir", "/var/run/ambit/node-agent",
        "--exclude-namespaces", "kube-system,ambit-system,monitoring",
    ]  # fmt: skip
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in
           container["env"]}  # fmt: skip
    assert env["NODE_NAME"] == "spec.nodeName"
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15031}
    paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert "/var/lib/rancher/k3s/data/cni" in paths
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "mesh"}  # merged
    assert spec["tolerations"][0]["key"] == "dedicated"


def test_both_are_node_critical_and_tolerate_every_taint() -> None:
    for name in (ZTUNNEL, AGENT):
        spec = daemonset(name)["spec"]["template"]["spec"]
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["tolerations"] == [{"operator": "Exists"}]
        labels = daemonset(name)["spec"]["template"]["metadata"]["labels"]
        assert labels["ambit.io/dataplane-mode"] == "none"


def test_the_privileges_are_exactly_the_listed_ones() -> None:
    """Changing a privilege changes this test, install_node's list and docs/node.md."""
    assert privileges(daemonset(ZTUNNEL)) == ZTUNNEL_PRIVILEGES
    assert privileges(daemonset(AGENT)) == AGENT_PRIVILEGES
    assert {p.what for p in install_node.ZTUNNEL_PRIVILEGES} == ZTUNNEL_PRIVILEGES
    assert {p.what for p in install_node.AGENT_PRIVILEGES} == AGENT_PRIVILEGES
    for name in (ZTUNNEL, AGENT):
        context = daemonset(name)["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        assert context["privileged"] is False
        assert context["readOnlyRootFilesystem"] is True


def test_the_agent_may_read_pods_and_namespaces_and_patch_pod_status_of_its_namespace() -> None:
    rules = {(d["kind"], d["metadata"].get("namespace")): d["rules"]
             for d in install_node.rbac() if d["kind"] in ("ClusterRole", "Role")}  # fmt: skip
    assert rules == {
        ("ClusterRole", None): [
            {"apiGroups": [""], "resources": ["pods", "namespaces"],
             "verbs": ["get", "list", "watch"]},
        ],
        ("Role", SYSTEM_NAMESPACE): [
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
        ],
    }  # fmt: skip


def _privilege_rows(section: str) -> list[str]:
    """The first cells of the table under ``### section`` of docs/node.md's Privileges,
    without backticks or colons (``runAsUser: 0`` reads ``runAsUser 0``)."""
    text = (REPO / "docs" / "node.md").read_text()
    privileges_part = text[text.index("## Privileges") :]
    part = privileges_part[privileges_part.index(f"### {section}\n") :]
    table = part[: part.index("\n\n", part.index("| privilege |"))]
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]  # no header
    return [row.split("|")[1].replace("`", "").replace(":", "").strip() for row in rows]


@pytest.mark.parametrize(
    ("section", "declared"),
    [("ztunnel", install_node.ZTUNNEL_PRIVILEGES),
     ("The node agent", install_node.AGENT_PRIVILEGES)],
)  # fmt: skip
def test_docs_node_md_lists_every_privilege(
    section: str, declared: tuple[install_node.Privilege, ...]
) -> None:
    rows = _privilege_rows(section)
    assert len(rows) == len(declared)
    for privilege in declared:
        assert any(row.startswith(privilege.what) for row in rows), privilege.what
