"""``ambit waypoint apply|list|status|delete --kubeconfig PATH`` against the real API
server, run as a user runs them (the CLI as a process): a waypoint applied and its
namespace enrolled, a second waypoint refused the namespace without --overwrite, the
list and status a user reads, delete, the Services ``status`` names as still bound to a
waypoint that does not exist (their traffic refused), and a clear line when the kubeconfig
is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.kube.client import KubeAdmin
from tests.kube.cluster import REPO, Cluster

pytestmark = pytest.mark.kube

GATEWAY_API = "gateway.networking.k8s.io/v1"


async def ambit(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "ambit.cli", "waypoint", *args]
    if "--kubeconfig" not in args:
        argv += ["--kubeconfig", str(cluster.kubeconfig)]
    done = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_waypoints_on_a_cluster_from_the_command_line(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    ns = kube_ns
    with trio.fail_after(120):
        code, out, err = await ambit(kube_cluster, "apply", "-n", ns, "--enroll-namespace")
        assert (code, err) == (0, ""), err
        assert out.splitlines() == [
            f"waypoint {ns}/waypoint created",
            f"namespace {ns} labelled ambit.io/use-waypoint=waypoint",
        ]
        gateway = await kube_admin.get(GATEWAY_API, "Gateway", "waypoint", ns)
        assert gateway["spec"]["gatewayClassName"] == "ambit-waypoint"
        assert gateway["spec"]["listeners"] == [
            {"name": "mesh", "port": 15008, "protocol": "HBONE", **_defaults(gateway)}
        ]
        namespace = await kube_admin.get("v1", "Namespace", ns)
        assert namespace["metadata"]["labels"]["ambit.io/use-waypoint"] == "waypoint"

        code, _out, err = await ambit(kube_cluster, "apply", "-n", ns, "--name", "edge",
                                      "--enroll-namespace")  # fmt: skip
        assert code == 1
        assert f"namespace {ns} already uses waypoint 'waypoint'" in err
        assert "--overwrite" in err
        code, out, _err = await ambit(
            kube_cluster, "apply", "-n", ns, "--name", "edge", "--enroll-namespace",
            "--overwrite", "--for", "all",
        )  # fmt: skip
        assert code == 0
        assert f"namespace {ns} labelled ambit.io/use-waypoint=edge" in out

        code, out, _err = await ambit(kube_cluster, "list", "-n", ns)
        assert code == 0
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", "CLASS", "FOR", "PROGRAMMED", "AGE"]
        assert [r.split()[:4] for r in rows] == [
            ["edge", "ambit-waypoint", "all", "Unknown"],
            ["waypoint", "ambit-waypoint", "service", "Unknown"],
        ]
        code, out, _err = await ambit(kube_cluster, "list", "-A")
        assert f"{ns} " in out

        code, out, _err = await ambit(kube_cluster, "status", "-n", ns, "--name", "edge")
        assert code == 0
        assert out.splitlines() == [
            f"waypoint {ns}/edge (class ambit-waypoint, for all)",
            "  no conditions yet: the control plane has not seen it",
            "  no deployment yet: the control plane's deployer has not made it",
        ]

        code, out, _err = await ambit(kube_cluster, "delete", "-n", ns, "--all")
        assert code == 0
        assert out.splitlines() == [
            f"waypoint {ns}/edge deleted",
            f"waypoint {ns}/waypoint deleted",
        ]
        code, out, _err = await ambit(kube_cluster, "list", "-n", ns)
        assert out.strip() == f"No waypoints found in namespace {ns}"
        code, _out, err = await ambit(kube_cluster, "status", "-n", ns)
        assert code == 1
        assert f"no waypoint waypoint in namespace {ns}" in err


async def test_status_of_a_missing_waypoint_names_the_services_still_bound_to_it(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str]
) -> None:
    """As in local mode: a waypoint that does not exist, but that Services' labels (their
    own, or their namespace's) still name, leaves their traffic refused, and ``status``
    says which."""
    ns = kube_ns

    def refused(*services: str) -> list[str]:
        return [
            f"  Service {ns}/{s} still uses it: its traffic is refused until the waypoint"
            " exists or the label is removed" for s in services
        ]  # fmt: skip

    with trio.fail_after(120):
        for name, labels in [
            ("web", {}),  # through its namespace's label, once enrolled
            ("api", {"istio.io/use-waypoint": "gone"}),  # Istio's label works as ambit's
            ("admin", {"ambit.io/use-waypoint": "none"}),  # opted out of its namespace's
        ]:
            await kube_admin.create({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
            })  # fmt: skip
        code, out, err = await ambit(kube_cluster, "status", "-n", ns, "--name", "gone")
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            f"ambit waypoint status: no waypoint gone in namespace {ns}",
            *refused("api"),
        ]

        code, _out, err = await ambit(kube_cluster, "apply", "-n", ns, "--enroll-namespace")
        assert code == 0, err
        code, _out, err = await ambit(kube_cluster, "delete", "waypoint", "-n", ns)
        assert code == 0, err
        code, out, err = await ambit(kube_cluster, "status", "-n", ns)
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            f"ambit waypoint status: no waypoint waypoint in namespace {ns}",
            *refused("web"),
        ]


async def test_a_wrong_kubeconfig_is_one_clear_line(kube_cluster: Cluster, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.kubeconfig"
    with trio.fail_after(60):
        code, out, err = await ambit(kube_cluster, "list", "--kubeconfig", str(missing))
    assert code == 1
    assert out == ""
    assert err.startswith("ambit waypoint list: ")
    assert len(err.strip().splitlines()) == 1


def _defaults(gateway: dict[str, object]) -> dict[str, object]:
    """What the API server defaults on a listener (allowedRoutes)."""
    listener = gateway["spec"]["listeners"][0]  # type: ignore[index]
    return {k: v for k, v in listener.items() if k not in ("name", "port", "protocol")}
