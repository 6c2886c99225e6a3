"""Every object says how it is doing, through the real ``ambit`` command: ``ambit apply``
of a manifest holding good objects, an ALLOW that fails validation, an ALLOW that is
valid but cannot take effect at ztunnel, and a Service whose cluster IP is taken. The
good objects apply; each bad one is one error line; the one that cannot take effect is
stored with a False condition and fails closed on the wire; hostile manifests leave
nothing behind."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.e2e.conftest import Cluster, demo_manifest, eventually

pytestmark = pytest.mark.root

MESHED = demo_manifest().replace(
    "metadata: {name: demo}", "metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}"
)

MIXED = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: extra, namespace: demo}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principal: [cluster.local/ns/demo/sa/default]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: v1
kind: Service
metadata: {name: twin, namespace: demo}
spec:
  clusterIP: {vip}
  selector: {app: server}
  ports: [{port: 81, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"""


async def test_apply_reports_each_object_and_a_broken_allow_fails_closed(
    cluster: Cluster,
) -> None:
    await cluster.up(cluster.manifest("demo.yaml", MESHED))
    (server,) = await cluster.get("services", "-n", "demo")

    async def status() -> str:
        result = await cluster.exec(
            "client", "curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}",
            "http://server/",
        )  # fmt: skip
        return result.stdout.decode().strip() or "000"

    assert await status() == "200"

    mixed = cluster.manifest("mixed.yaml", MIXED.replace("{vip}", server["vip"]))
    applied = await cluster.ambit("apply", "-f", str(mixed))
    out, err = applied.stdout.decode(), applied.stderr.decode()
    assert applied.returncode == 1, (out, err)
    assert out.splitlines() == [
        "ServiceAccount demo/extra created",
        "AuthorizationPolicy demo/get-only created",
        "PeerAuthentication demo/strict created",
    ]
    errors = err.splitlines()
    assert len(errors) == 2, err
    assert errors[0].startswith(f"error: {mixed}: document 2 (AuthorizationPolicy demo/typo):")
    assert "spec.rules[0].from[0].source.principal: unknown field" in errors[0]
    assert errors[1].startswith("error: Service demo/twin: spec.clusterIP:")
    assert "already allocated to Service demo/server" in errors[1]

    # Listing shows what was stored, with a one-word status; the refused ones are absent.
    listed = await cluster.ambit("get", "authorizationpolicies", "-n", "demo")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.decode().splitlines()]
    assert rows[0] == ["NAME", "STATUS", "AGE"]
    assert [r[0] for r in rows[1:]] == ["get-only"]
    missing = await cluster.ambit("get", "ap", "typo", "-n", "demo")
    assert missing.returncode == 1
    assert b"not found" in missing.stderr

    # The policy that cannot take effect says so, as kubectl shows conditions.
    async def condition() -> dict[str, object] | None:
        shown = await cluster.ambit("get", "ap", "get-only", "-n", "demo", "-o", "yaml")
        assert shown.returncode == 0, shown.stderr
        doc = yaml.safe_load(shown.stdout)
        assert doc["spec"]["rules"] == [{"to": [{"operation": {"methods": ["GET"]}}]}]
        assert doc["metadata"]["uid"]
        found = [
            c
            for c in doc.get("status", {}).get("conditions", [])
            if c["type"] == "ambit.io/ZtunnelAccepted"
        ]
        return found[0] if found else None

    async def has_condition() -> bool:
        return await condition() is not None

    assert await eventually(has_condition, seconds=5)
    accepted = await condition()
    assert accepted is not None
    assert accepted["status"] == "False"
    assert accepted["reason"] == "L7AttributesIgnored"
    assert "methods" in str(accepted["message"])

    # ...and fails closed: the ALLOW that matches nothing at L4 leaves the server denied.
    async def denied() -> bool:
        return await status() == "000"

    assert await eventually(denied, seconds=5)
    as_json = await cluster.ambit("get", "ap", "-n", "demo", "-o", "json")
    assert [o["metadata"]["name"] for o in json.loads(as_json.stdout)] == ["get-only"]


HOSTILE = [
    # nodeName that once made local mode write outside its state directory as root
    {"kind": "Pod", "metadata": {"name": "escape", "namespace": "demo"},
     "spec": {"nodeName": "../../../tmp/x", "containers": [{"name": "c", "command": ["true"]}]}},
    {"kind": "Pod", "metadata": {"name": "two words", "namespace": "demo"},
     "spec": {"containers": [{"name": "c", "command": ["true"]}]}},
    {"kind": "Pod", "metadata": {"name": "line\nbreak", "namespace": "demo"},
     "spec": {"containers": [{"name": "c", "command": ["true"]}]}},
    {"kind": "Pod", "metadata": {"name": "nul", "namespace": "demo"},
     "spec": {"containers": [{"name": "c", "command": ["sle\x00ep", "1"]}]}},
    {"kind": "Pod", "metadata": {"name": "env", "namespace": "demo"},
     "spec": {"containers": [{"name": "c", "command": ["true"],
                              "env": [{"name": "A=B", "value": "x"}]}]}},
    {"kind": "Pod", "metadata": {"name": "big-label", "namespace": "demo",
                                 "labels": {"app": "x" * (2 << 20)}},
     "spec": {"containers": [{"name": "c", "command": ["true"]}]}},
]  # fmt: skip


async def test_hostile_manifests_are_refused_and_the_cluster_keeps_working(
    cluster: Cluster,
) -> None:
    await cluster.up(cluster.manifest("demo.yaml", demo_manifest()))
    hostile = cluster.manifest(
        "hostile.yaml",
        "\n---\n".join(json.dumps({"apiVersion": "v1", **doc}) for doc in HOSTILE),
    )
    nested = cluster.manifest("nested.yaml", "a: " + "[" * 3000 + "]" * 3000 + "\n")
    applied = await cluster.ambit("apply", "-f", str(hostile), "-f", str(nested))
    assert applied.returncode == 1
    assert applied.stdout == b""
    errors = applied.stderr.decode().splitlines()
    assert len(errors) == len(HOSTILE) + 1, errors
    assert all(e.startswith("error: ") and "internal error" not in e for e in errors), errors
    assert "nested too deeply" in errors[-1]
    assert not (cluster.tmp_path.parent / "x.log").exists()

    # The daemon still applies, lists and removes what it is given.
    extra = cluster.manifest(
        "extra.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ok, namespace: demo}\n",
    )
    again = await cluster.ambit("apply", "-f", str(extra))
    assert again.returncode == 0, again.stderr
    assert again.stdout == b"ServiceAccount demo/ok created\n"
    pods = await cluster.ambit("get", "pods", "-n", "demo", "-o", "json")
    assert pods.returncode == 0, pods.stderr
    assert {p["name"] for p in json.loads(pods.stdout)} == {"client", "server"}
    # The fixture's 'ambit down' then checks that nothing is left behind.


ISTIO_TRAFFIC = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: demo}
spec: {hosts: [server], http: [{route: [{destination: {host: server, subset: v1}}]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: demo}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: permissive, namespace: demo}
spec: {mtls: {mode: PERMISSIVE}}
"""


async def test_istio_manifests_apply_unchanged_with_what_ambit_ignores_named(
    cluster: Cluster,
) -> None:
    """Manifests written for Istio go in as they are: ``ambit up`` starts with them and
    ``ambit apply`` takes them, each kind ambit does not implement named once on stderr
    with what to use instead (a warning, exit 0), the kinds it does implement applied."""
    istio = cluster.manifest("istio.yaml", ISTIO_TRAFFIC)
    started = await cluster.up(cluster.manifest("demo.yaml", MESHED), istio)
    warned = [line for line in started.stderr.decode().splitlines() if "ignored" in line]
    assert len(warned) == 2, started.stderr.decode()
    assert "(VirtualService demo/server): Istio's VirtualService is ignored" in warned[0]
    assert "HTTPRoute or GRPCRoute" in warned[0]
    assert "(Sidecar demo/default): Istio's Sidecar is ignored" in warned[1]
    [stored] = await cluster.get("peerauthentications", "-n", "demo")
    assert stored["metadata"]["name"] == "permissive"

    applied = await cluster.ambit("apply", "-f", str(istio))
    out, err = applied.stdout.decode(), applied.stderr.decode()
    assert applied.returncode == 0, (out, err)
    assert out.splitlines() == ["PeerAuthentication demo/permissive unchanged"]
    lines = err.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["warning", "warning"], err
    assert "ambient mode has no sidecars" in lines[1]
