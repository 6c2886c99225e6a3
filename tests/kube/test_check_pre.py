"""``ambit check --pre`` against the real API server, before ambit is installed: a
cluster without ambit passes (Gateway API's CRDs absent is a warning with the command
that installs them; present, a pass); credentials the server refuses, a kubeconfig
that is not there and a server that does not answer each fail the first checks with a
hint, through the real command; Istio on the cluster (istio-system, an istiod
Deployment, a namespace labelled for it) and objects of Istio's kinds ambit ignores are
warnings that name them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import yaml

from k8s.check import report
from k8s.check.base import CheckConfig, Result
from k8s.check.run import run_checks
from tests.kube.client import KubeAdmin, NotFound
from tests.kube.cluster import REPO, Cluster, free_port
from tests.kube.istio import istio_control_plane, istio_networking_crds, networking_object

pytestmark = pytest.mark.kube
__all__ = ["istio_control_plane", "istio_networking_crds"]  # fixtures, used here

SECONDS = 60.0
GATEWAY = "Gateway API's CRDs are installed, of a version ambit reads"
ISTIO = "Istio is not installed on this cluster"
BOTH = "no namespace would be captured by both meshes"
IGNORED = "no objects of Istio's kinds that ambit ignores"


async def pre(cluster: Cluster, kubeconfig: Path | None = None) -> dict[str, Result]:
    config = CheckConfig(kubeconfig=kubeconfig or cluster.kubeconfig, pre=True)
    with trio.fail_after(SECONDS):
        results = await run_checks(config)
    return {r.name: r for r in results}


async def gateway_api_installed(admin: KubeAdmin) -> bool:
    try:
        await admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                        "gateways.gateway.networking.k8s.io")  # fmt: skip
    except NotFound:
        return False
    return True


def ambit(*args: str, timeout: float = SECONDS) -> subprocess.CompletedProcess[str]:
    """The real command, ``python -m ambit.cli``, from this tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ambit.cli", *args], capture_output=True, text=True,
        timeout=timeout, env=env, cwd=REPO,
    )  # fmt: skip


async def test_pre_passes_on_a_cluster_without_ambit(
    kube_cluster: Cluster, kube_admin: KubeAdmin
) -> None:
    results = await pre(kube_cluster)
    statuses = {name: r.status for name, r in results.items()}
    gateway = results.pop(GATEWAY)
    assert {r.status for r in results.values()} == {"ok"}, statuses
    assert list(statuses)[:3] == [
        "can initialize the client",
        "can query the Kubernetes API",
        "is running the minimum Kubernetes API version",
    ]
    assert "control plane namespace does not already exist" in statuses
    # Gateway API's CRDs are installed once per session by whichever test first needs them.
    if await gateway_api_installed(kube_admin):
        assert gateway.status == "ok"
    else:
        assert gateway.status == "warn"
        assert "not installed" in gateway.message
        assert "standard-install.yaml" in gateway.hint
    assert report.exit_code(list(results.values())) == 0


async def test_pre_passes_gateway_api_once_its_crds_are_installed(
    kube_cluster: Cluster, gateway_crds: list[str]
) -> None:
    results = await pre(kube_cluster)
    assert results[GATEWAY].status == "ok", results[GATEWAY]
    assert results[GATEWAY].message == "bundle version v1.6.3"


async def test_refused_credentials_fail_with_a_hint(kube_cluster: Cluster, tmp_path: Path) -> None:
    config = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"]["token"] = "not-a-token"
    kubeconfig = tmp_path / "wrong-token"
    kubeconfig.write_text(yaml.safe_dump(config))
    results = await pre(kube_cluster, kubeconfig)
    assert [r.status for r in results.values()] == ["ok", "fail"]
    query = results["can query the Kubernetes API"]
    assert "401" in query.message
    assert "token" in query.hint


async def test_the_command_says_what_is_wrong_with_the_kubeconfig(
    kube_cluster: Cluster, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    done = await trio.to_thread.run_sync(
        lambda: ambit("check", "--pre", "--kubeconfig", str(missing))
    )
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["kubernetes-api", "--------------", "\u00d7 can initialize the client"]
    assert f"the kubeconfig {missing} does not exist" in lines[3]
    assert lines[4].strip().startswith("hint: give --kubeconfig PATH")
    assert lines[-1].startswith("Status check results are \u00d7")

    # A server that does not answer: the kubeconfig of the cluster, on a port nobody has.
    config = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(yaml.safe_dump(config))
    done = await trio.to_thread.run_sync(
        lambda: ambit("check", "--pre", "--kubeconfig", str(unreachable), "-o", "json")
    )
    assert done.returncode == 1, done.stderr
    answer = yaml.safe_load(done.stdout)  # JSON is YAML
    assert answer["success"] is False
    (api,) = answer["categories"]
    assert [c["result"] for c in api["checks"]] == ["success", "error"]
    assert "Connect" in api["checks"][1]["message"]
    assert api["checks"][1]["hint"] == "is the API server still reachable?"


async def test_istio_on_the_cluster_is_a_warning_naming_it(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, istio_control_plane: str
) -> None:
    with trio.fail_after(10):
        labels = {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}
        await kube_admin.patch("v1", "Namespace", kube_ns, labels)
    results = await pre(kube_cluster)
    istio, both = results[ISTIO], results[BOTH]
    assert istio.status == "warn"
    assert "namespace istio-system" in istio.message
    assert "Deployment istio-system/istiod" in istio.message
    assert "both meshes would capture the same pods" in istio.message
    assert both.status == "warn"
    assert f"{kube_ns} (istio.io/dataplane-mode=ambient)" in both.message
    assert "ambit.io/dataplane-mode=none" in both.hint
    # Warnings only: the cluster can still take ambit.
    assert report.exit_code(list(results.values())) == 0

    # As the hint says: ambit's label wins over Istio's, so ambit keeps out.
    with trio.fail_after(10):
        labels = {"metadata": {"labels": {"ambit.io/dataplane-mode": "none"}}}
        await kube_admin.patch("v1", "Namespace", kube_ns, labels)
    both = (await pre(kube_cluster))[BOTH]
    assert kube_ns not in both.message


async def test_without_istio_no_namespace_is_in_both_meshes(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    with trio.fail_after(10):
        labels = {"istio-injection": "enabled", "ambit.io/dataplane-mode": "ambient"}
        await kube_admin.patch("v1", "Namespace", kube_ns, {"metadata": {"labels": labels}})
    results = await pre(kube_cluster)
    assert results[ISTIO].status == "ok"
    assert results[BOTH].status == "ok"
    assert results[BOTH].message == "Istio is not installed"


async def test_istio_objects_ambit_ignores_are_reported(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, istio_networking_crds: list[str]
) -> None:
    assert (await pre(kube_cluster))[IGNORED].status == "ok"  # the kinds, but no object
    with trio.fail_after(20):
        for name in ("reviews", "ratings"):
            await kube_admin.create(networking_object("VirtualService", kube_ns, name))
        await kube_admin.create(networking_object("ServiceEntry", kube_ns, "external"))
    results = await pre(kube_cluster)
    ignored = results[IGNORED]
    assert ignored.status == "warn"
    assert ignored.message == (
        f"VirtualService (networking.istio.io): 2 ({kube_ns}/ratings, {kube_ns}/reviews);"
        f" ServiceEntry (networking.istio.io): 1 ({kube_ns}/external)"
    )
    assert ignored.hint.startswith("ambit ignores these: traffic they describe is not applied")
    # Istio's CRDs alone are not Istio running.
    assert results[ISTIO].status == "ok"


async def test_check_without_ambit_says_to_install_it_once(kube_cluster: Cluster) -> None:
    with trio.fail_after(SECONDS):
        results = await run_checks(CheckConfig(kubeconfig=kube_cluster.kubeconfig))
    failed = [(r.name, r.message, r.hint) for r in results if r.status == "fail"]
    assert failed == [
        (
            "ambit's CRDs are installed and established",
            "not installed: authorizationpolicies.security.ambit.io,"
            " peerauthentications.security.ambit.io, requestauthentications.security.ambit.io,"
            " faultinjections.networking.ambit.io, localratelimits.networking.ambit.io",
            "install ambit's CRDs: ambit install --crds | kubectl apply --server-side -f -",
        ),
        (
            "control plane namespace exists",
            "namespace ambit-system does not exist",
            "install the control plane: ambit install | kubectl apply -f -",
        ),
    ]
    # What would live in the namespace is not asked about.
    assert not any(r.group in ("ambit-certificates", "ambit-node") for r in results)
    assert report.exit_code(results) == 1
