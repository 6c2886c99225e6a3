"""The charts are what ``python -m k8s.charts`` writes (no drift from ``ambit install``),
``helm lint`` passes them, and ``helm template`` of ``ambit-base`` and ``ambit-control``
together renders what ``ambit install --crds`` and ``ambit install`` print (but the
Namespace, which ``helm install --create-namespace`` makes), for the defaults and for
values set; the chart's values schema refuses what ``ambit install`` refuses. The same
for ``ambit-node`` and ``ambit install --node``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s import charts, crds, install, install_node
from mesh.constants import SYSTEM_NAMESPACE

REPO = Path(__file__).resolve().parents[2]
HELM_SECONDS = 60
KUBE_VERSION = "v1.36.3"  # the release tests/kube runs


@pytest.fixture(scope="module")
def helm() -> Path:
    path = Path(os.environ.get("AMBIT_HELM_BIN", REPO / ".cache" / "helm" / "bin")) / "helm"
    if not os.access(path, os.X_OK):
        reason = f"needs {path}: `make helm` builds it from helm.sh/helm/v3 (tests/helm/go.mod)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {reason}")
        pytest.skip(reason)
    return path


def run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = REPO / ".cache" / "helm" / "home"  # no state of Helm's outside the repository
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}  # fmt: skip
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=HELM_SECONDS, env=env
    )


def template(helm: Path, *settings: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    # Quantities as strings, as ambit install writes them (a chart's values may be numbers).
    sets = [a for s in settings for a in ("--set-string" if "resources" in s else "--set", s)]
    for chart in ("ambit-base", "ambit-control"):
        result = run(helm, "template", chart, str(charts.ROOT / chart), "--namespace",
                     SYSTEM_NAMESPACE, "--kube-version", KUBE_VERSION, *sets)  # fmt: skip
        assert result.returncode == 0, result.stderr
        docs += [d for d in yaml.safe_load_all(result.stdout) if d]
    return docs


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def expected(*settings: str) -> list[dict[str, Any]]:
    docs = crds.crds() + install.manifests(install.values_from(settings))
    return sorted((d for d in docs if d["kind"] != "Namespace"), key=key)


def test_the_charts_are_generated_from_ambit_install() -> None:
    assert charts.stale() == [], "run python -m k8s.charts"


def test_the_version_is_pyprojects() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == install.VERSION


@pytest.mark.parametrize("chart", ["ambit-base", "ambit-control", "ambit-node"])
def test_helm_lint_passes(helm: Path, chart: str) -> None:
    result = run(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(charts.ROOT / chart))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings",
    [
        (),
        ("trustDomain=example.org", "replicas=2", "image=registry.example/ambit:1.2",
         "resources.limits.cpu=2", "resources.requests.memory=512Mi", "logLevel=debug"),
    ],
    ids=["defaults", "set"],
)  # fmt: skip
def test_helm_template_renders_what_ambit_install_prints(
    helm: Path, settings: tuple[str, ...]
) -> None:
    assert sorted(template(helm, *settings), key=key) == expected(*settings)


@pytest.mark.parametrize(
    "setting", ["imagePullPolicy=Sometimes", "replicas=-1", "colour=blue", "logLevel=loud"]
)
def test_the_values_schema_refuses_what_ambit_install_refuses(helm: Path, setting: str) -> None:
    with pytest.raises(install.ValuesError):
        install.values_from([setting])
    result = run(helm, "template", "ambit-control", str(charts.ROOT / "ambit-control"),
                 "--set", setting)  # fmt: skip
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


NODE_SET = (
    "trustDomain=example.org", "image=registry.example/ambit:1.2", "logLevel=debug",
    "controlPlane=cp.mesh.svc", "cni.binDir=/var/lib/rancher/k3s/data/cni",
    "cni.confDir=/var/lib/rancher/k3s/agent/etc/cni/net.d",
    "ztunnel.resources.limits.cpu=2", "nodeAgent.resources.requests.memory=64Mi",
)  # fmt: skip
NODE_JSON = (
    'excludeNamespaces=["kube-system","ambit-system","monitoring"]',
    'tolerations=[{"key":"dedicated","operator":"Equal","value":"db","effect":"NoSchedule"}]',
    'nodeSelector={"pool":"mesh"}',
)  # fmt: skip


def template_node(helm: Path, *settings: str) -> list[dict[str, Any]]:
    """``helm template`` of ambit-node; a JSON value is given with --set-json."""
    args: list[str] = []
    for setting in settings:
        flag = "--set-json" if "=[" in setting or "={" in setting else "--set-string"
        args += [flag, setting]
    result = run(helm, "template", "ambit-node", str(charts.ROOT / "ambit-node"), "--namespace",
                 SYSTEM_NAMESPACE, "--kube-version", KUBE_VERSION, *args)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("settings", [(), NODE_SET + NODE_JSON], ids=["defaults", "set"])
def test_helm_template_of_ambit_node_renders_what_ambit_install_node_prints(
    helm: Path, settings: tuple[str, ...]
) -> None:
    expected = install_node.manifests(install_node.values_from(list(settings)))
    assert sorted(template_node(helm, *settings), key=key) == sorted(expected, key=key)


def test_helm_set_of_a_list_as_helm_users_write_it(helm: Path) -> None:
    """``--set excludeNamespaces={a,b}``, Helm's list syntax, joins into the one flag."""
    result = run(helm, "template", "ambit-node", str(charts.ROOT / "ambit-node"),
                 "--set", "excludeNamespaces={kube-system,ambit-system,monitoring}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '- "kube-system,ambit-system,monitoring"' in result.stdout


@pytest.mark.parametrize(
    "setting",
    ["imagePullPolicy=Sometimes", "replicas=2", "cni.binDir=opt/cni", "controlPlane=http://cp",
     'tolerations[0].kee=x'],
)  # fmt: skip
def test_the_node_values_schema_refuses_what_ambit_install_node_refuses(
    helm: Path, setting: str
) -> None:
    with pytest.raises(install.ValuesError):
        install_node.values_from(
            [setting.replace("tolerations[0].kee=x", 'tolerations=[{"kee":"x"}]')]
        )
    result = run(helm, "template", "ambit-node", str(charts.ROOT / "ambit-node"),
                 "--set", setting)  # fmt: skip
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
