"""Checks of ambit as ``ambit install --crds`` and ``ambit install`` put it on a cluster:
its CRDs established, the control plane's ServiceAccount allowed what
:func:`k8s.install.permissions` grants (asked of the API server's authorizer with
SubjectAccessReviews), its Deployment available and pods Ready, its Service with a
ready endpoint for each port. The node side's checks are :mod:`k8s.check.nodes`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from k8s import crds, install
from k8s.check.base import OK, Context, Outcome, answered, established, fail, warn

SAR_PATH: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
INSTALL_HINT: Final = "install the control plane: ambit install | kubectl apply -f -"
CRDS_HINT: Final = "install ambit's CRDs: ambit install --crds | kubectl apply --server-side -f -"


def _logs_hint(context: Context) -> str:
    ns, name = context.namespace, install.NAME
    return f"kubectl -n {ns} describe deployment {name}; kubectl -n {ns} logs deployment/{name}"


async def crds_established(context: Context) -> Outcome:
    wanted = [c["metadata"]["name"] for c in crds.crds()]
    missing, waiting = [], []
    for name in wanted:
        crd = await context.crd(name)
        if crd is None:
            missing.append(name)
        elif not established(crd):
            waiting.append(name)
    if missing:
        return fail(f"not installed: {', '.join(missing)}", CRDS_HINT)
    if waiting:
        return fail(
            f"not Established yet: {', '.join(waiting)}",
            "kubectl get crd NAME -o yaml shows the API server's conditions; try again in a"
            " few seconds",
        )
    return OK


async def namespace_exists(context: Context) -> Outcome:
    status, body = await context.get(f"/api/v1/namespaces/{context.namespace}")
    if status == 404:
        return fail(f"namespace {context.namespace} does not exist", INSTALL_HINT)
    return OK if status == 200 else answered(status, body, "GET namespace")


def _needs(namespace: str) -> list[tuple[str, str, str, str, str]]:
    """(verb, group, resource, namespace, name) for everything the ServiceAccount is
    granted (one object's name where a permission names objects)."""
    out: list[tuple[str, str, str, str, str]] = []
    for permission in install.permissions():
        for resource in permission.resources:
            for verb in permission.verbs:
                ns = namespace if permission.namespaced else ""
                out.append((verb, permission.group, resource, ns, next(iter(permission.names), "")))
    return out


async def _allowed(context: Context, need: tuple[str, str, str, str, str]) -> bool | Outcome:
    verb, group, resource, namespace, name = need
    plural, _, subresource = resource.partition("/")
    user = f"system:serviceaccount:{context.namespace}:{install.NAME}"
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{context.namespace}",
                       "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": plural,
                                   "subresource": subresource, "namespace": namespace,
                                   "name": name},
        },
    }  # fmt: skip
    status, body = await context.create(SAR_PATH, review)
    if status not in (200, 201):
        return answered(status, body, "a SubjectAccessReview")
    return bool((body.get("status") or {}).get("allowed"))


def _refused_text(refused: list[tuple[str, str, str, str, str]]) -> list[str]:
    """``get, list, watch pods``: the refused verbs of each resource (and object, and
    namespace) together, in the order first refused."""
    verbs: dict[tuple[str, str, str], list[str]] = {}
    for verb, group, resource, namespace, name in refused:
        verbs.setdefault(
            (f"{resource}.{group}" if group else resource, name, namespace), []
        ).append(verb)
    return [
        f"{', '.join(v)} {what}{f' {name}' if name else ''}{f' in {ns}' if ns else ''}"
        for (what, name, ns), v in verbs.items()
    ]


async def rbac(context: Context) -> Outcome:
    refused: list[tuple[str, str, str, str, str]] = []
    for need in _needs(context.namespace):
        allowed = await _allowed(context, need)
        if isinstance(allowed, Outcome):
            return allowed
        if not allowed:
            refused.append(need)
    if refused:
        texts = _refused_text(refused)
        more = f"; and {len(texts) - 8} more" if len(texts) > 8 else ""
        return fail(
            f"ServiceAccount {context.namespace}/{install.NAME} may not"
            f" {'; '.join(texts[:8])}{more}",
            "its ClusterRole, Role or bindings are missing or changed: apply 'ambit install'"
            " again (ambit install | kubectl apply -f -)",
        )
    return OK


async def deployment_available(context: Context) -> Outcome:
    path = f"/apis/apps/v1/namespaces/{context.namespace}/deployments/{install.NAME}"
    status, body = await context.get(path)
    if status == 404:
        return fail(f"no Deployment {context.namespace}/{install.NAME}", INSTALL_HINT)
    if status != 200:
        return answered(status, body, "GET the Deployment")
    wanted = int((body.get("spec") or {}).get("replicas", 1))
    available = int((body.get("status") or {}).get("availableReplicas") or 0)
    if wanted == 0:
        return fail("the Deployment is scaled to 0 replicas", "kubectl scale --replicas=1 ...")
    if available < wanted:
        return fail(f"{available} of {wanted} replicas available", _logs_hint(context))
    return Outcome("ok", f"{available} of {wanted} replicas available")


VERSION_LABEL: Final = "app.kubernetes.io/version"


async def same_version(context: Context) -> Outcome:
    """The control plane's Deployment is of this command's version (its version label, as
    ``ambit install`` renders it)."""
    path = f"/apis/apps/v1/namespaces/{context.namespace}/deployments/{install.NAME}"
    status, body = await context.get(path)
    if status == 404:
        return fail(f"no Deployment {context.namespace}/{install.NAME}", INSTALL_HINT)
    if status != 200:
        return answered(status, body, "GET the Deployment")
    running = ((body.get("metadata") or {}).get("labels") or {}).get(VERSION_LABEL)
    if running != install.VERSION:
        return warn(
            f"the control plane is {running or 'of no known version'}; this ambit is"
            f" {install.VERSION}",
            "upgrade it with this command (ambit install | kubectl apply -f -), or check it"
            " with the ambit of its version",
        )
    return Outcome("ok", install.VERSION)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def pods_ready(context: Context) -> Outcome:
    path = f"/api/v1/namespaces/{context.namespace}/pods"
    pods = await context.list_items(path, {"labelSelector": f"app={install.NAME}"})
    running = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not running:
        return fail("no control plane pod", _logs_hint(context))
    waiting = [
        f"{p['metadata']['name']} ({(p.get('status') or {}).get('phase', 'Pending')})"
        for p in running
        if not _ready(p)
    ]
    if waiting:
        return fail(f"not Ready: {', '.join(waiting)}", _logs_hint(context))
    return Outcome("ok", f"{len(running)} Ready")


async def service_endpoints(context: Context) -> Outcome:
    """The Service has its three ports, and each has a ready endpoint."""
    ns, name = context.namespace, install.NAME
    status, body = await context.get(f"/api/v1/namespaces/{ns}/services/{name}")
    if status == 404:
        return fail(f"no Service {ns}/{name}", INSTALL_HINT)
    if status != 200:
        return answered(status, body, "GET the Service")
    ports = {p.get("port") for p in (body.get("spec") or {}).get("ports") or []}
    wanted = [port for _, port in install.PORTS]
    missing = [str(p) for p in wanted if p not in ports]
    if missing:
        return fail(f"Service {ns}/{name} has no port {', '.join(missing)}", INSTALL_HINT)
    slices = await context.list_items(
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        {"labelSelector": f"kubernetes.io/service-name={name}"},
    )
    served: set[int] = set()
    for each in slices:
        ready = [e for e in each.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")]
        if ready:
            served |= {int(p["port"]) for p in each.get("ports") or [] if p.get("port")}
    unserved = [str(p) for p in wanted if p not in served]
    if unserved:
        return fail(
            f"no ready endpoint for port {', '.join(unserved)} of Service {ns}/{name}:"
            " proxies cannot reach the control plane",
            _logs_hint(context),
        )
    return OK
