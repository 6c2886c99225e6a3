"""Checks of the cluster itself, before and after ambit is installed: the API server's
version, what the user may create (``--pre``), Gateway API's CRDs, an Istio
installation on the same cluster, and Istio's kinds that ambit ignores.

Reaching the API server at all is :mod:`k8s.check.run`'s first step (nothing else can
be asked before it); :func:`can_query` is the request it makes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from k8s import gateway_api
from k8s.check.base import OK, Context, Json, Outcome, answered, fail, warn
from k8s.istio_kinds import IGNORED_HINT, is_istio_group
from k8s.sources.resources import RESOURCES, chosen_version, served_versions
from k8s.translate_parts import dataplane_mode
from k8s.unsupported import find_unsupported
from mesh.constants import ISTIO_LABEL_DATAPLANE_MODE, LABEL_DATAPLANE_MODE
from mesh.model import GATEWAY_GROUP

MINIMUM_VERSION: Final = (1, 29)  # CRD validation rules (CEL) are GA from 1.29
ISTIO_NAMESPACE: Final = "istio-system"
ISTIOD: Final = "istiod"
SSAR_PATH: Final = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
# What `ambit install --crds`, `ambit install` and `--node` create (group, resource).
CLUSTER_CREATES: Final = (
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies"),  # --node
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings"),
)
NAMESPACED_CREATES: Final = (
    ("", "serviceaccounts"),
    ("", "services"),
    ("apps", "deployments"),
    ("apps", "daemonsets"),  # ambit install --node
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
)
ISTIO_INJECTION: Final = "istio-injection"
ISTIO_REVISION: Final = "istio.io/rev"
BOTH_MESHES_HINT: Final = (
    "ambit and Istio would both capture the same pods (two ztunnels, two CAs, two sets of"
    " redirection rules). Uninstall Istio first, or keep each namespace in one mesh:"
    f" label it {LABEL_DATAPLANE_MODE}=none to keep ambit out (ambit.io/ labels win over"
    " istio.io/ ones on the same object)"
)


async def can_query(context: Context) -> Outcome:
    """Whether the API server answers these credentials (discovery, which every
    authenticated user may read)."""
    status, body = await context.get("/api")
    if status == 200:
        return OK
    if status == 401:
        return fail(
            "the API server refused the credentials (HTTP 401 Unauthorized)",
            "is the kubeconfig's token or certificate current? (kubectl get ns should"
            " work with the same kubeconfig and context)",
        )
    return answered(status, body, "GET /api")


def parse_version(info: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) of ``/version``'s answer; GKE's minor reads ``30+``."""
    major = re.match(r"\d+", str(info.get("major") or ""))
    minor = re.match(r"\d+", str(info.get("minor") or ""))
    if major is None or minor is None:
        git = re.match(r"v?(\d+)\.(\d+)", str(info.get("gitVersion") or ""))
        return (int(git.group(1)), int(git.group(2))) if git else None
    return int(major.group()), int(minor.group())


async def minimum_version(context: Context) -> Outcome:
    status, body = await context.get("/version")
    if status != 200:
        return answered(status, body, "GET /version")
    version = parse_version(body)
    wanted = ".".join(map(str, MINIMUM_VERSION))
    if version is None:
        return warn(f"cannot read the server's version from {body}", f"ambit needs {wanted}+")
    if version < MINIMUM_VERSION:
        return fail(
            f"the API server is {body.get('gitVersion') or '.'.join(map(str, version))};"
            f" ambit needs {wanted} or later",
            f"upgrade the cluster to Kubernetes {wanted} or later",
        )
    return Outcome("ok", str(body.get("gitVersion") or ""))


async def _may(context: Context, verb: str, group: str, resource: str, namespace: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "namespace": namespace}},
    }  # fmt: skip
    status, body = await context.create(SSAR_PATH, review)
    return status in (200, 201) and bool((body.get("status") or {}).get("allowed"))


async def _creates(context: Context, wanted: tuple[tuple[str, str], ...], ns: str) -> Outcome:
    refused = [
        f"{r}.{g}" if g else r for g, r in wanted if not await _may(context, "create", g, r, ns)
    ]
    if refused:
        where = f" in namespace {ns}" if ns else ""
        return fail(
            f"these credentials may not create {', '.join(refused)}{where}",
            "installing ambit needs a cluster administrator's credentials"
            " (kubectl auth can-i create customresourcedefinitions)",
        )
    return OK


async def can_create_cluster_resources(context: Context) -> Outcome:
    return await _creates(context, CLUSTER_CREATES, "")


async def can_create_namespaced_resources(context: Context) -> Outcome:
    return await _creates(context, NAMESPACED_CREATES, context.namespace)


async def namespace_absent(context: Context) -> Outcome:
    status, body = await context.get(f"/api/v1/namespaces/{context.namespace}")
    if status == 404:
        return OK
    if status == 200:
        return fail(
            f"namespace {context.namespace} already exists: ambit is installed (or was)",
            "run 'ambit check' to see how the installation is doing; 'ambit install |"
            " kubectl delete -f -' removes it",
        )
    return answered(status, body, f"GET namespace {context.namespace}")


def _gateway_resources() -> list[Any]:
    return [r for r in RESOURCES if r.group == GATEWAY_GROUP]


async def gateway_api_crds(context: Context) -> Outcome:
    """Gateway API's CRDs that ambit reads are installed, each serving a version ambit
    reads; a warning only (ambit runs without waypoints without them)."""
    served = served_versions(await context.crds())
    resources = _gateway_resources()
    absent = [r.name for r in resources if r.name not in served]
    if len(absent) == len(resources):
        return warn(
            "Gateway API's CRDs are not installed: waypoints and routes are not available",
            gateway_api.INSTALL_HELP.rstrip(),
        )
    unserved = [
        f"{r.name} (serves {', '.join(served[r.name]) or 'nothing'}; ambit reads"
        f" {', '.join(r.versions)})"
        for r in resources
        if r.name in served and chosen_version(r, served) is None
    ]
    if absent or unserved:
        found = [*(f"{n} is not installed" for n in absent), *unserved]
        return warn(
            "; ".join(found),
            f"install Gateway API's standard channel, {gateway_api.VERSION} (ambit is tested"
            f" with it):\n{gateway_api.INSTALL_COMMAND}",
        )
    bundle = {
        str(((c.get("metadata") or {}).get("annotations") or {}).get(
            gateway_api.BUNDLE_VERSION_ANNOTATION, "?"))
        for c in await context.crds()
        if (c.get("spec") or {}).get("group") == GATEWAY_GROUP
    }  # fmt: skip
    return Outcome("ok", f"bundle version {', '.join(sorted(bundle))}")


async def _istio_control_planes(context: Context) -> list[str]:
    found: list[str] = []
    status, _ = await context.get(f"/api/v1/namespaces/{ISTIO_NAMESPACE}")
    if status == 200:
        found.append(f"namespace {ISTIO_NAMESPACE}")
    deployments: dict[str, None] = {}
    for query in ({"labelSelector": f"app={ISTIOD}"}, {"fieldSelector": f"metadata.name={ISTIOD}"}):
        for item in await context.list_items("/apis/apps/v1/deployments", query):
            meta = item.get("metadata") or {}
            deployments[f"{meta.get('namespace')}/{meta.get('name')}"] = None
    found += [f"Deployment {d}" for d in sorted(deployments)]
    return found


async def istio_not_installed(context: Context) -> Outcome:
    """No Istio control plane (namespace istio-system, an istiod Deployment) runs here."""
    found = await _istio_control_planes(context)
    crds = [
        c for c in await context.crds() if is_istio_group(str((c.get("spec") or {}).get("group")))
    ]
    if not found:
        detail = f"{len(crds)} CRDs of Istio's groups, no istiod" if crds else ""
        return Outcome("ok", detail)
    also = f"; {len(crds)} CRDs of Istio's groups" if crds else ""
    return warn(
        f"Istio is installed on this cluster ({', '.join(found)}{also}): both meshes would"
        " capture the same pods",
        BOTH_MESHES_HINT,
    )


def istio_captures(labels: Mapping[str, str]) -> str | None:
    """Which of Istio's labels would have Istio capture a namespace's pods (ambient, its
    sidecar injector, a revision's injector), or None."""
    if labels.get(ISTIO_LABEL_DATAPLANE_MODE) == "ambient":
        return f"{ISTIO_LABEL_DATAPLANE_MODE}=ambient"
    if labels.get(ISTIO_INJECTION) == "enabled":
        return f"{ISTIO_INJECTION}=enabled"
    if ISTIO_REVISION in labels:
        return f"{ISTIO_REVISION}={labels[ISTIO_REVISION]}"
    return None


def in_both_meshes(namespaces: list[Json]) -> list[str]:
    """``name (label)`` of each namespace that both ambit (its dataplane-mode label,
    ambit's winning over Istio's: :func:`k8s.translate_parts.dataplane_mode`) and Istio
    (:func:`istio_captures`) would enroll."""
    out: list[str] = []
    for namespace in namespaces:
        meta = namespace.get("metadata") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        istio = istio_captures(labels)
        if istio is not None and dataplane_mode(labels) == "ambient":
            out.append(f"{meta.get('name')} ({istio})")
    return sorted(out)


async def no_namespace_in_both_meshes(context: Context) -> Outcome:
    """With Istio installed, no namespace is enrolled in both meshes."""
    if not await _istio_control_planes(context):
        return Outcome("ok", "Istio is not installed")
    both = in_both_meshes(await context.list_items("/api/v1/namespaces"))
    if not both:
        return OK
    return warn(
        f"namespaces enrolled in ambit and in Istio: {', '.join(both)}; both meshes would"
        " capture their pods",
        BOTH_MESHES_HINT,
    )


async def no_ignored_istio_objects(context: Context) -> Outcome:
    """Objects of Istio's kinds that ambit does not implement, each kind with a count and
    some names: a warning, since what they describe is not applied."""
    found = await find_unsupported(context.api, await context.crds())
    if not found:
        return OK
    kinds = "; ".join(f"{f.kind.kind} ({f.kind.group}): {f.shown()}" for f in found)
    return warn(kinds, IGNORED_HINT)
