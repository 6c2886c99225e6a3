"""docs/upgrade.md's commands with the real ``kubectl`` (``tests/kube/shell.py``), the
harness playing scheduler and kubelet for ``ambit-system``: the CRDs' ``kubectl diff``
(nothing to change when the version is the same), the control plane applied with a new
image and ``kubectl rollout status`` until it is rolled out (``maxSurge: 1``,
``maxUnavailable: 0``, the waypoints' image with it), ``kubectl rollout undo`` (and the
warning kubectl gives about it), the older output applied again; then removed as
``installing.py`` removes every install of the session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from mesh.constants import SYSTEM_NAMESPACE
from tests.kube import installing
from tests.kube.client import KubeAdmin
from tests.kube.cluster import REPO, Cluster
from tests.kube.kubelet import running_pods
from tests.kube.shell import Shell, doc_commands, user_shell
from tests.kube.test_kubectl_install import CRDS, INSTALL

pytestmark = pytest.mark.kube

UPGRADE_MD = REPO / "docs" / "upgrade.md"
DEPLOYMENT = f"deployment/ambit-controlplane -n {SYSTEM_NAMESPACE}"
CRDS_DIFF = "ambit install --crds | kubectl diff --server-side -f -"
ROLLOUT = f"kubectl rollout status {DEPLOYMENT}"
UNDO = f"kubectl rollout undo {DEPLOYMENT}"
NEW = "registry.example/ambit:NEW"


async def image_and_command(shell: Shell) -> tuple[str, list[str]]:
    done = await shell.ok(f"kubectl get {DEPLOYMENT} -o json")
    container = json.loads(done.stdout)["spec"]["template"]["spec"]["containers"][0]
    return container["image"], container["command"]


async def test_upgrade_md_typed_by_a_user(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, tmp_path: Path
) -> None:
    shell = user_shell(kube_cluster, tmp_path)
    given = doc_commands(UPGRADE_MD)
    assert CRDS_DIFF in given
    assert CRDS in given
    assert ROLLOUT in given
    assert UNDO in " ".join(UPGRADE_MD.read_text().split())  # in the text, across a line
    assert "ambit install --image registry.example/ambit:NEW --set ... | kubectl apply -f -" in (
        given
    )
    node = f"node-{kube_ns}"
    try:
        await shell.ok(CRDS)
        await shell.ok(INSTALL)
        diff = await shell.run(CRDS_DIFF)  # the same version: nothing changes
        assert (diff.returncode, diff.stdout) == (0, ""), str(diff)
        strategy = await shell.ok(
            f"kubectl get {DEPLOYMENT} -o jsonpath='{{.spec.strategy.rollingUpdate}}'"
        )
        assert json.loads(strategy.stdout) == {"maxSurge": 1, "maxUnavailable": 0}
        async with running_pods(kube_admin, SYSTEM_NAMESPACE, node):
            rolled = await shell.ok(ROLLOUT)
            assert rolled.lines[-1] == 'deployment "ambit-controlplane" successfully rolled out'

            # The upgrade: the new image (no other --set here), rolled out.
            applied = await shell.ok(f"ambit install --image {NEW} | kubectl apply -f -")
            assert "deployment.apps/ambit-controlplane configured" in applied.lines
            rolled = await shell.ok(ROLLOUT)
            assert rolled.lines[-1] == 'deployment "ambit-controlplane" successfully rolled out'
            image, command = await image_and_command(shell)
            assert image == NEW
            assert command[command.index("--waypoint-image") + 1] == NEW

            # Rolling back: kubectl rollout undo, with the warning the document names.
            undone = await shell.ok(UNDO)
            assert undone.stdout == "deployment.apps/ambit-controlplane rolled back\n"
            assert "kubectl.kubernetes.io/last-applied-configuration" in undone.stderr
            await shell.ok(ROLLOUT)
            image, _ = await image_and_command(shell)
            assert image == "ambit:0.1.0"
            # The older output applied again, as the document prefers.
            await shell.ok(INSTALL)
            await shell.ok(ROLLOUT)
            image, _ = await image_and_command(shell)
            assert image == "ambit:0.1.0"
    finally:
        with trio.fail_after(installing.REMOVE_SECONDS * 3):
            async with running_pods(kube_admin, SYSTEM_NAMESPACE, node):
                await installing.remove_all(kube_admin)
