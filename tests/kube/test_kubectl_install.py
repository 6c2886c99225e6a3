"""docs/install.md as a new user types it: the real ``kubectl`` (``make kube`` builds the
cluster's release) and this checkout's ``ambit`` in a ``bash -o pipefail`` shell, against
the harness's cluster, every command taken from the document's own ``sh`` blocks.

``ambit check --pre``, the CRDs, the control plane and the node side applied through
pipes, what a user looks at with ``kubectl get``; the control plane then runs as its
ServiceAccount (a token from ``kubectl create token``, as a kubelet would mount one)
with its pod made Ready by the harness, so ``kubectl get gatewayclass`` shows the class
it creates, the document's waypoint Gateway applied with ``kubectl apply -f`` is
deployed, and ``ambit check`` passes, warning only that the node side runs on no node
(none here is labelled Linux). Then the uninstall the document gives leaves nothing of
ambit behind. Gateway API's CRDs come from the ``gateway_crds`` fixture: the
command ``ambit install --gateway-api`` prints downloads them from GitHub, which the
tests cannot reach. And what kubectl shows a user coming from Istio: with Istio's CRDs
beside ambit's, ``kubectl get authorizationpolicies`` names ambit's group only; a
typo'd field is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

from k8s import gateway_api
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube import crds, installing
from tests.kube.client import Conflict, KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import REPO, Cluster, free_port, write_kubeconfig
from tests.kube.kubelet import running_pods
from tests.kube.shell import Shell, doc_blocks, doc_commands, user_shell
from tests.kube.test_check import _available, _endpoint_ready
from tests.kube.test_install_controlplane import ready

pytestmark = pytest.mark.kube

INSTALL_MD = REPO / "docs" / "install.md"
GATEWAY_API = "gateway.networking.k8s.io/v1"
CLASS = "ambit-waypoint"
SECONDS = 90.0
PASS, WARN = "\u221a ", "\u203c "
NODE_SIDE = "the node side is installed (ztunnel and node agent DaemonSets)"

CRDS = "ambit install --crds | kubectl apply --server-side -f -"
INSTALL = "ambit install | kubectl apply -f -"
NODE_INSTALL = "ambit install --node | kubectl apply -f -"
NODE_UNINSTALL = "ambit install --node | kubectl delete -f -"
UNINSTALL = "ambit install | kubectl delete -f -"
READY = "ztunnel and the node agent are Ready on every node"
UNINSTALL_CRDS = "ambit install --crds | kubectl delete -f -"


def commands(*, after: str) -> list[str]:
    """The document's commands from ``after`` on (the uninstall is its last block)."""
    given = doc_commands(INSTALL_MD)
    return given[given.index(after) :]


def waypoint_manifest(ns: str) -> str:
    """The document's waypoint Gateway, in namespace ``ns`` instead of ``shop``."""
    (block,) = [b for b in doc_blocks(INSTALL_MD, "yaml") if "kind: Gateway" in b]
    assert "namespace: shop}" in block
    return block.replace("namespace: shop}", f"namespace: {ns}}}")


def marks(lines: list[str]) -> list[str]:
    """The result lines of ``ambit check``: passed, warning or failed."""
    return [line for line in lines if line[:2] in (PASS, WARN, "\u00d7 ")]


@asynccontextmanager
async def controlplane(shell: Shell, cluster: Cluster, tmp: Path) -> AsyncIterator[None]:
    """``ambit controlplane --source kubernetes`` as the installed ServiceAccount, as its
    pod runs it, until ready; SIGTERM on exit, as the kubelet stops the pod."""
    token = await shell.ok(f"kubectl create token ambit-controlplane -n {SYSTEM_NAMESPACE}")
    kubeconfig = tmp / "controlplane.kubeconfig"
    write_kubeconfig(kubeconfig, cluster.server, cluster.ca_file, token.stdout.strip())
    metrics = free_port()
    argv = [
        sys.executable, "-m", "ambit", "--log-format", "json", "controlplane",
        "--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
        "--ca-port", str(free_port()), "--config-port", str(free_port()),
        "--metrics-port", str(metrics), "--drain-seconds", "1",
    ]  # fmt: skip
    log = tmp / "controlplane.log"
    async with await trio.open_file(log, "wb") as out:
        process = await trio.lowlevel.open_process(
            argv, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
            stdout=out.wrapped, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with trio.fail_after(SECONDS):
            while not await trio.to_thread.run_sync(ready, metrics):
                assert process.poll() is None, log.read_text()
                await trio.sleep(0.2)
        yield
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def class_accepted(admin: KubeAdmin) -> Obj | None:
    try:
        klass = await admin.get(GATEWAY_API, "GatewayClass", CLASS)
    except NotFound:
        return None
    conditions = (klass.get("status") or {}).get("conditions") or []
    accepted = any(c["type"] == "Accepted" and c["status"] == "True" for c in conditions)
    return klass if accepted else None


async def waypoint_made(admin: KubeAdmin, ns: str) -> Obj | None:
    try:
        return await admin.get("apps/v1", "Deployment", "waypoint", ns)
    except NotFound:
        return None


async def waypoint_gone(shell: Shell, ns: str) -> bool:
    selector = "gateway.networking.k8s.io/gateway-name=waypoint"
    done = await shell.ok(f"kubectl get deployments,services,serviceaccounts -n {ns} -l {selector}"
                          " -o name")  # fmt: skip
    return done.stdout == ""


async def test_kubectl_version_is_the_clusters_release(
    kube_cluster: Cluster, tmp_path: Path
) -> None:
    done = await user_shell(kube_cluster, tmp_path).ok("kubectl version")
    assert done.lines[0] == "Client Version: v1.36.3"
    assert done.lines[-1] == "Server Version: v1.36.3"


async def test_install_md_typed_by_a_user(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, gateway_crds: list[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    shell = user_shell(kube_cluster, tmp_path)
    given = doc_commands(INSTALL_MD)
    for command in (CRDS, INSTALL, NODE_INSTALL, NODE_UNINSTALL, UNINSTALL, UNINSTALL_CRDS):
        assert command in given
    existing_class: Obj | None = None  # another test's control plane may have made it
    with suppress(NotFound), trio.fail_after(10):
        existing_class = await kube_admin.get(GATEWAY_API, "GatewayClass", CLASS)
    node = f"node-{kube_ns}"
    try:
        # Before: the cluster is ready; Gateway API's CRDs are there (the fixture).
        pre = await shell.ok("ambit check --pre")
        assert f"{PASS}control plane namespace does not already exist" in pre.lines
        assert pre.lines[-1].startswith("Status check results are \u221a (10 checks: 0 failed")
        printed = await shell.ok("ambit install --gateway-api")
        assert gateway_api.INSTALL_COMMAND.splitlines()[0] in printed.stdout

        # 1. ambit's CRDs; 3. the control plane.
        applied = await shell.ok(CRDS)
        assert applied.lines == [
            f"customresourcedefinition.apiextensions.k8s.io/{name} serverside-applied"
            for name in ("authorizationpolicies.security.ambit.io",
                         "peerauthentications.security.ambit.io",
                         "requestauthentications.security.ambit.io",
                         "faultinjections.networking.ambit.io",
                         "localratelimits.networking.ambit.io")
        ]  # fmt: skip
        applied = await shell.ok(INSTALL)
        assert applied.lines[0] == f"namespace/{SYSTEM_NAMESPACE} created"
        assert applied.lines[-1] == "deployment.apps/ambit-controlplane created"
        # 4. The node side (no node here is labelled Linux: no DaemonSet pod is made).
        applied = await shell.ok(NODE_INSTALL)
        assert applied.lines[0] == "serviceaccount/ztunnel created"
        assert applied.lines[-1] == "daemonset.apps/ambit-node-agent created"

        # What a user looks at.
        got = await shell.ok("kubectl get crd -o name")
        crd = "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies"
        assert f"{crd}.security.ambit.io" in got.lines
        got = await shell.ok("kubectl api-resources --api-group security.ambit.io -o name")
        assert len(got.lines) == 3
        assert "`kubectl get ambit-io -A`" in INSTALL_MD.read_text()
        got = await shell.ok("kubectl get ambit-io -A")
        assert got.stderr.strip() == "No resources found"
        got = await shell.ok(f"kubectl get deployment ambit-controlplane -n {SYSTEM_NAMESPACE}")
        assert got.lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        assert got.lines[1].split()[:2] == ["ambit-controlplane", "0/1"]
        got = await shell.ok(f"kubectl get service ambit-controlplane -n {SYSTEM_NAMESPACE}")
        assert "15010/TCP,15012/TCP,15014/TCP" in got.lines[1]
        down = await shell.run("ambit check")  # no kubelet has run the pod yet
        assert down.returncode == 1, str(down)
        assert "\u00d7 control plane Deployment is available" in down.lines
        hint = next(line for line in down.lines if line.startswith("    hint: kubectl"))
        described = await shell.ok(hint.removeprefix("    hint: ").split(";")[0])
        assert described.lines[0].split() == ["Name:", "ambit-controlplane"]

        # The control plane runs (its pod made Ready by the harness, as a kubelet would).
        async with running_pods(kube_admin, SYSTEM_NAMESPACE, node):
            async with controlplane(shell, kube_cluster, tmp_path):
                with trio.fail_after(SECONDS):
                    await wait_for(lambda: _available(kube_admin), seconds=SECONDS, interval=0.2)
                    await wait_for(lambda: _endpoint_ready(kube_admin), seconds=SECONDS)
                    await wait_for(lambda: class_accepted(kube_admin), seconds=SECONDS)
                got = await shell.ok("kubectl get gatewayclass")
                row = next(line.split() for line in got.lines if line.startswith(f"{CLASS} "))
                assert row[:3] == [CLASS, "ambit.io/mesh-controller", "True"]

                # Waypoints: the document's Gateway, applied as a user would.
                (tmp_path / "waypoint.yaml").write_text(waypoint_manifest(kube_ns))
                applied = await shell.ok("kubectl apply -f waypoint.yaml")
                assert applied.stdout == "gateway.gateway.networking.k8s.io/waypoint created\n"
                with trio.fail_after(SECONDS):
                    await wait_for(lambda: waypoint_made(kube_admin, kube_ns), seconds=SECONDS)
                got = await shell.ok(f"kubectl get deployment,service,serviceaccount -n {kube_ns}"
                                     " -l team=shop -o name")  # fmt: skip
                assert sorted(got.lines) == ["deployment.apps/waypoint", "service/waypoint",
                                             "serviceaccount/waypoint"]  # fmt: skip
                ports = await shell.ok(f"kubectl get service waypoint -n {kube_ns} -o jsonpath="
                                       "'{range .spec.ports[*]}{.name}={.port} {end}'")  # fmt: skip
                assert ports.stdout.split() == ["mesh=15008", "status-port=15021"]
                roots = await shell.ok(f"kubectl get configmap ambit-ca-root-cert -n {kube_ns}"
                                       " -o jsonpath='{.data.root-cert\\.pem}'")  # fmt: skip
                assert roots.stdout.startswith("-----BEGIN CERTIFICATE-----")
                scale = "kubectl scale deployment/waypoint -n shop --replicas 2"
                assert f"`{scale}`" in " ".join(INSTALL_MD.read_text().split())
                scaled = await shell.ok(scale.replace("-n shop", f"-n {kube_ns}"))
                assert scaled.stdout == "deployment.apps/waypoint scaled\n"

                # ambit check: the node side is installed, on no node (none is Linux).
                check = await shell.ok("ambit check")
                assert f"{PASS}{NODE_SIDE}" in check.lines
                assert [m for m in marks(check.lines) if not m.startswith(PASS)] == [
                    f"{WARN}{READY}"
                ]
                assert check.lines[-1] == (
                    "Status check results are \u221a (19 checks: 0 failed, 1 warnings)"
                )

                # Deleting the Gateway deletes what was made for it.
                await shell.ok("kubectl delete -f waypoint.yaml")
                with trio.fail_after(SECONDS):
                    await wait_for(lambda: waypoint_gone(shell, kube_ns), seconds=SECONDS,
                                   interval=0.5)  # fmt: skip
            # The process is stopped (above) as deleting its namespace stops the pod.

            # Uninstall, exactly as the document says: the node side first.
            assert commands(after=NODE_UNINSTALL)[1] == UNINSTALL
            for command in commands(after=NODE_UNINSTALL):
                await shell.ok(command)
        await assert_nothing_left(shell)
        after = await shell.ok("ambit check --pre")
        assert f"{PASS}control plane namespace does not already exist" in after.lines
    finally:
        with trio.fail_after(installing.REMOVE_SECONDS * 3):
            async with running_pods(kube_admin, SYSTEM_NAMESPACE, node):
                await installing.remove_node(kube_admin)
                await installing.remove_all(kube_admin)
            await restore_class(kube_admin, existing_class)


async def assert_nothing_left(shell: Shell) -> None:
    """Nothing that the install, or the control plane it ran, made is left."""
    listed = await shell.ok("kubectl get crd -o name")
    assert [line for line in listed.lines if line.endswith(".security.ambit.io")] == []
    for kind, name in (
        ("namespace", SYSTEM_NAMESPACE),
        ("clusterrole", "ambit-controlplane"),
        ("clusterrolebinding", "ambit-controlplane"),
        ("clusterrole", "ambit-node-agent"),
        ("clusterrolebinding", "ambit-node-agent"),
        ("validatingadmissionpolicy", "ambit-node-agent-own-pod"),
        ("validatingadmissionpolicybinding", "ambit-node-agent-own-pod"),
        ("gatewayclass", CLASS),
    ):
        got = await shell.run(f"kubectl get {kind} {name}")  # fmt: skip
        assert got.returncode == 1, str(got)
        assert "NotFound" in got.stderr, str(got)
    got = await shell.ok("kubectl get configmaps -A -l ambit.io/managed-by -o name")
    assert got.stdout == ""
    got = await shell.ok("kubectl get all,serviceaccounts -A -l app.kubernetes.io/part-of=ambit"
                         " -o name")  # fmt: skip
    assert got.stdout == ""


async def restore_class(admin: KubeAdmin, existing: Obj | None) -> None:
    """The GatewayClass as this test found it: another test's control plane made it."""
    if existing is None:
        return
    with suppress(Conflict):
        await admin.create({"apiVersion": GATEWAY_API, "kind": "GatewayClass",
                            "metadata": {"name": CLASS}, "spec": existing["spec"]})  # fmt: skip


def policy(api_version: str, ns: str, name: str, source: str = "principals") -> str:
    return (
        f"apiVersion: {api_version}\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\n"
        f"spec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n"
        f"        {source}: [cluster.local/ns/{ns}/sa/web]\n"
    )


async def test_what_kubectl_shows_a_user_coming_from_istio(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, tmp_path: Path
) -> None:
    """With Istio's CRDs beside ambit's, the plural names ambit's group only, without a
    warning; a typo'd field is refused by kubectl's default (strict) validation."""
    shell = user_shell(kube_cluster, tmp_path)
    try:
        await shell.ok(CRDS)
        with trio.fail_after(60):  # left installed, as the session's other tests leave them
            await crds.install(kube_admin, crds.policy_crds("security.istio.io"))
        (tmp_path / "ambit.yaml").write_text(policy("security.ambit.io/v1", kube_ns, "ambits"))
        (tmp_path / "istio.yaml").write_text(policy("security.istio.io/v1", kube_ns, "istios"))
        await shell.ok("kubectl apply -f ambit.yaml -f istio.yaml")
        got = await shell.ok(f"kubectl get authorizationpolicies -n {kube_ns} -o name")
        assert (got.lines, got.stderr) == (["authorizationpolicy.security.ambit.io/ambits"], "")
        got = await shell.ok(
            f"kubectl get authorizationpolicies.security.istio.io -n {kube_ns} -o name"
        )
        assert got.lines == ["authorizationpolicy.security.istio.io/istios"]
        got = await shell.ok("kubectl get ambit-io -A -o name")
        assert "authorizationpolicy.security.ambit.io/ambits" in got.lines
        assert not [line for line in got.lines if "istio" in line]

        (tmp_path / "typo.yaml").write_text(
            policy("security.ambit.io/v1", kube_ns, "typo", source="principal")
        )
        refused = await shell.run("kubectl apply -f typo.yaml")
        assert refused.returncode == 1, str(refused)
        assert 'unknown field "spec.rules[0].from[0].source.principal"' in refused.stderr
    finally:
        with trio.fail_after(installing.REMOVE_SECONDS * 3):
            await installing.remove_all(kube_admin)
