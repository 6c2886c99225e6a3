"""``ambit install`` renders (``k8s.install``): every object valid for the tested Kubernetes
(kubernetes-validate's schemas of 1.36, strict: no unknown field), the values an operator
sets, and the names the rest of ambit expects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ambit.cli import build_parser
from ambit.cmd_install import GATEWAY_API_VERSION
from k8s import crds, install
from k8s.sources.resources import RESOURCES
from k8s.waypoint_deployer import DeployerSettings
from mesh.constants import SYSTEM_NAMESPACE


def main(argv: list[str]) -> int:
    """The command without ``ambit.cli.main``'s logging set-up (it would bind structlog to
    this test's captured stderr)."""
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


KUBERNETES_VERSION = "1.36"  # the release tests/kube runs (tests/kube/go.mod)
GO_MOD = Path(__file__).resolve().parents[1] / "kube" / "go.mod"


def render(*argv: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["install", *argv]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_kubernetes_validate_has_the_tested_release() -> None:
    go_mod = GO_MOD.read_text()
    assert re.search(r"k8s\.io/kubernetes v1\.36\.", go_mod)
    assert "1.36.0" in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize(
    "values",
    [install.Values(), install.values_from(["replicas=3", "resources.limits.cpu=2"])],
    ids=["defaults", "set"],
)
def test_every_object_is_valid_for_the_tested_kubernetes(values: install.Values) -> None:
    for doc in install.manifests(values):
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == "1.36"


def test_the_cli_prints_the_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    docs = render(capsys=capsys)
    assert docs == install.manifests()
    assert [d["kind"] for d in docs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ]
    assert all(d["metadata"].get("namespace", SYSTEM_NAMESPACE) == SYSTEM_NAMESPACE for d in docs)


def test_python_dash_m_ambit_is_the_command() -> None:
    """``python -m ambit install --crds`` (a checkout without the entry point) prints what
    ``ambit install --crds`` prints."""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "ambit", "install", "--crds"], cwd=repo,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(yaml.safe_load_all(done.stdout)) == crds.crds()


def test_values_reach_the_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    docs = render(
        "--trust-domain", "example.org", "--image", "registry.example/ambit:1.2",
        "--set", "replicas=2", "--set", "resources.requests.memory=512Mi",
        "--set", "resources.limits.cpu=2", "--set", "logLevel=debug",
        capsys=capsys,
    )  # fmt: skip
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/ambit:1.2"
    command = container["command"]
    assert command[command.index("--trust-domain") + 1] == "example.org"
    assert command[command.index("--log-level") + 1] == "debug"
    assert command[command.index("--source") + 1] == "kubernetes"
    assert "--kubeconfig" not in command  # in-cluster credentials
    assert "--ca-dir" not in command  # the CA's keys in Secrets, shared by the replicas
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("replicas=many", "replicas 'many' is not an integer"),
        ("trustDomain=Cluster Local", "trustDomain"),
        ("resources.requests.cpu=lots", "is not a quantity"),
        ("imagePullPolicy=Sometimes", "imagePullPolicy"),
        ("colour=blue", "unknown key 'colour'"),
        ("replicas", "write KEY=VALUE"),
    ],
)
def test_a_bad_value_is_refused_by_name(
    setting: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--set", setting]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert error in captured.err


def test_the_service_is_where_proxies_look_for_the_control_plane() -> None:
    service = install.controlplane_service()
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    ports = {p["port"] for p in service["spec"]["ports"]}
    settings = DeployerSettings()
    assert {settings.control_plane, settings.ca} <= {f"{host}:{p}" for p in ports}
    assert ports == {15010, 15012, 15014, 15016}


def test_the_role_lets_the_source_watch_every_resource() -> None:
    granted = {
        (group, resource)
        for p in install.permissions()
        if {"list", "watch"} <= set(p.verbs) and not p.namespaced
        for group in [p.group]
        for resource in p.resources
    }
    assert {(r.group, r.plural) for r in RESOURCES} <= granted
    assert ("apiextensions.k8s.io", "customresourcedefinitions") in granted
    # Leases and Secrets only in ambit's own namespace; no Secret read but the CA's.
    for p in install.permissions():
        if "leases" in p.resources or "secrets" in p.resources:
            assert p.namespaced
        if "secrets" in p.resources:
            assert set(p.verbs) == {"create"} or (p.verbs == ("get",) and p.names)


def test_gateway_api_instructions_name_the_tested_release(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pinned = re.search(r"sigs\.k8s\.io/gateway-api (v[0-9.]+)", GO_MOD.read_text())
    assert pinned is not None
    assert pinned.group(1) == GATEWAY_API_VERSION
    assert main(["install", "--gateway-api"]) == 0
    out = capsys.readouterr().out
    assert f"download/{GATEWAY_API_VERSION}/standard-install.yaml" in out
