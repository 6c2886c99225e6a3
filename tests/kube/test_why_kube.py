"""``ambit why --kubeconfig PATH`` against the real API server, run as a user runs it: the
objects listed with the kubeconfig's credentials by the control plane's own source and
translated by its translator: an L4 DENY by principal is named rule by rule, another
caller is allowed with the clause that failed, and an unknown pod is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio

from tests.kube import crds
from tests.kube.client import KubeAdmin
from tests.kube.cluster import REPO, Cluster
from tests.kube.test_controlplane_kube import apply, fixed_addresses, nodes, objects

pytestmark = pytest.mark.kube
__all__ = ["nodes"]  # the fixture, used by name

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec:
  nodeName: node-2
  serviceAccountName: default
  containers: [{name: server, image: ignored}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec:
  nodeName: node-1
  containers: [{name: client, image: ignored}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-default, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/default"]}}]}]
"""


async def why(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "ambit.cli", "why", *args,
            "--kubeconfig", str(cluster.kubeconfig)]  # fmt: skip
    done = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_why_on_a_cluster(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, nodes: dict[str, str]
) -> None:
    docs = objects(MANIFEST.replace("/ns/demo/", f"/ns/{kube_ns}/"), kube_ns, nodes)
    pod_ips, vips = fixed_addresses(docs)
    with trio.fail_after(120):
        await crds.install(kube_admin, crds.policy_crds("security.istio.io"))
        await apply(kube_admin, docs, pod_ips, vips)
        code, out, err = await why(kube_cluster, f"{kube_ns}/client", f"{kube_ns}/server")
        assert code == 3, err
        assert f"DENY policy {kube_ns}/no-default rule 1: matched" in out, out
        assert "verdict: REFUSED (response flag DENY)" in out
        assert err == ""
        code, out, err = await why(kube_cluster, f"{kube_ns}/sa/other", f"{kube_ns}/server",
                                   "-o", "json")  # fmt: skip
        assert code == 0, err
        answer = json.loads(out)
        assert answer["verdict"]["allowed"]
        authz = answer["steps"][-1]
        assert authz["what"] == "authorization"
        assert authz["checks"][0]["matched"] is False
        assert (
            f"principal cluster.local/ns/{kube_ns}/sa/other not in" in authz["checks"][0]["words"]
        )
        code, _out, err = await why(kube_cluster, f"{kube_ns}/nobody", f"{kube_ns}/server")
        assert code == 1
        assert f"no pod {kube_ns}/nobody" in err
