"""What ``ambit install`` renders: the control plane on a cluster, as plain objects.

In :data:`mesh.constants.SYSTEM_NAMESPACE` (``ambit-system``): the Namespace, the control
plane's ServiceAccount, its RBAC, the Deployment running ``ambit controlplane --source
kubernetes`` (in-cluster credentials) and the Service the proxies reach it at (the name
the waypoint deployer gives them): 15010 the config stream, 15012 the CA, 15014
metrics and ``/ready``.

The control plane's permissions are declared once (:func:`permissions`): reading every
API resource its source watches (:data:`k8s.sources.resources.RESOURCES`, and CRDs),
writing the status of the objects it reports on, TokenReviews, events, the waypoint
deployer's objects, GatewayClasses, and leases in its own namespace only. The
ClusterRole and the Role are rendered from that list, and the tests ask the API server
(SubjectAccessReview) whether the ServiceAccount may do each of these things.

:class:`Values` holds what an operator sets (trust domain, image, resources, replicas),
from ``--set key=value`` (:func:`values_from`), with the keys the Helm charts' values
will have. The node side (the ztunnel DaemonSet, the node agent) is not rendered: it
does not exist yet.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from k8s.sources.resources import CRD_RESOURCE, RESOURCES
from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_METRICS_PORT,
    CONTROL_PLANE_PORT,
    CONTROL_PLANE_SERVICE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
    LABEL_DATAPLANE_MODE,
    SYSTEM_NAMESPACE,
)
from mesh.model import GATEWAY_GROUP

Obj = dict[str, Any]

NAME: Final = CONTROL_PLANE_SERVICE_ACCOUNT  # the ServiceAccount, Deployment, Service, roles
CA_DIR: Final = "/var/lib/ambit/ca"
RUN_AS: Final = 1337  # Istio's proxy user
DRAIN_SECONDS: Final = 25  # below the pod's grace period
GRACE_SECONDS: Final = 30
_QUANTITY: Final = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_TRUST_DOMAIN: Final = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$")
_IMAGE: Final = re.compile(r"^[^\s]{1,4096}$")


class ValuesError(ValueError):
    """A value an operator set that cannot be rendered; the message names the key."""


def _tag() -> str:
    try:
        return version("ambit").replace("+", "-")
    except PackageNotFoundError:  # a source tree
        return "latest"


@dataclass(frozen=True)
class Values:
    """What an operator sets; each field's ``key`` metadata is its ``--set`` key."""

    trust_domain: str = dataclasses.field(
        default=DEFAULT_TRUST_DOMAIN, metadata={"key": "trustDomain"}
    )
    image: str = dataclasses.field(default=f"ambit:{_tag()}", metadata={"key": "image"})
    image_pull_policy: str = dataclasses.field(
        default="IfNotPresent", metadata={"key": "imagePullPolicy"}
    )
    replicas: int = dataclasses.field(default=1, metadata={"key": "replicas"})
    cpu_request: str = dataclasses.field(default="100m", metadata={"key": "resources.requests.cpu"})
    memory_request: str = dataclasses.field(
        default="256Mi", metadata={"key": "resources.requests.memory"}
    )
    cpu_limit: str = dataclasses.field(default="", metadata={"key": "resources.limits.cpu"})
    memory_limit: str = dataclasses.field(
        default="1Gi", metadata={"key": "resources.limits.memory"}
    )
    log_level: str = dataclasses.field(default="info", metadata={"key": "logLevel"})

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain):
            raise ValuesError(
                f"trustDomain {self.trust_domain!r}: lower-case letters, digits, '.', '-'"
                " and '_', as a SPIFFE trust domain"
            )
        if not _IMAGE.match(self.image):
            raise ValuesError(f"image {self.image!r}: must be an image reference")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ValuesError(
                f"imagePullPolicy {self.image_pull_policy!r}: Always, IfNotPresent or Never"
            )
        if not 0 <= self.replicas <= 100:
            raise ValuesError(f"replicas {self.replicas}: 0 to 100")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_request", "_limit")) and value and not _QUANTITY.match(value):
                raise ValuesError(f"{f.metadata['key']} {value!r} is not a quantity (100m, 1Gi)")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValuesError(f"logLevel {self.log_level!r}: debug, info, warning or error")


KEYS: Final = {f.metadata["key"]: f for f in dataclasses.fields(Values)}


def values_from(settings: Iterable[str], base: Values | None = None) -> Values:
    """``key=value`` settings (``--set``) over ``base``; :class:`ValuesError` for an
    unknown key or a value that cannot be used."""
    changes: dict[str, object] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ValuesError(f"{setting!r}: write KEY=VALUE")
        if key not in KEYS:
            raise ValuesError(f"unknown key {key!r}; known: {', '.join(KEYS)}")
        field = KEYS[key]
        if field.type in (int, "int"):
            try:
                changes[field.name] = int(text)
            except ValueError:
                raise ValuesError(f"{key} {text!r} is not an integer") from None
        else:
            changes[field.name] = text
    return dataclasses.replace(base or Values(), **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Permission:
    """Verbs on resources of one API group; ``namespaced``: only in ambit's namespace."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    namespaced: bool = False
    why: str = ""

    def rule(self) -> Obj:
        return {"apiGroups": [self.group], "resources": list(self.resources),
                "verbs": list(self.verbs)}  # fmt: skip


READ: Final = ("get", "list", "watch")
WRITE: Final = ("create", "update", "patch", "delete")


def permissions() -> tuple[Permission, ...]:
    """Everything the control plane's ServiceAccount may do."""
    watched: dict[str, list[str]] = {}
    for resource in (*RESOURCES, CRD_RESOURCE):
        plurals = watched.setdefault(resource.group, [])
        if resource.plural not in plurals:
            plurals.append(resource.plural)
    reads = [Permission(g, tuple(p), READ, why="the source lists and watches them")
             for g, p in watched.items()]  # fmt: skip
    status: dict[str, list[str]] = {"": ["services/status"]}
    for resource in RESOURCES:
        if resource.crd:
            status.setdefault(resource.group, []).append(f"{resource.plural}/status")
    statuses = [
        Permission(g, tuple(p), ("get", "update", "patch"), why="conditions it reports")
        for g, p in status.items()
    ]
    return (
        *reads,
        *statuses,
        Permission("authentication.k8s.io", ("tokenreviews",), ("create",),
                   why="the CA checks the tokens proxies present"),
        Permission("", ("events",), ("create", "patch"), why="events on objects"),
        Permission("events.k8s.io", ("events",), ("create", "patch"), why="events on objects"),
        Permission("apps", ("deployments",), READ + WRITE, why="the waypoint deployer"),
        Permission("", ("services", "serviceaccounts"), WRITE, why="the waypoint deployer"),
        Permission(GATEWAY_GROUP, ("gatewayclasses",), ("create", "update", "patch"),
                   why="the waypoint GatewayClass"),
        Permission("coordination.k8s.io", ("leases",), (*READ, "create", "update", "patch"),
                   namespaced=True, why="leader election, in its own namespace"),
    )  # fmt: skip


def _labels(component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "ambit", "app.kubernetes.io/version": _tag()}
    if component:
        labels = {"app": component, "app.kubernetes.io/name": component, **labels}
    return labels


def _meta(name: str, namespace: str | None = None, component: str | None = NAME) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = _labels(component)
    return meta


def rbac() -> list[Obj]:
    """The ClusterRole and Role of :func:`permissions`, bound to the ServiceAccount."""
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": SYSTEM_NAMESPACE}
    out: list[Obj] = []
    for kind, namespace in (("Cluster", None), ("", SYSTEM_NAMESPACE)):
        rules = [p.rule() for p in permissions() if p.namespaced == (namespace is not None)]
        role_kind = f"{kind}Role"
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind,
                    "metadata": _meta(NAME, namespace), "rules": rules})  # fmt: skip
        out.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": f"{role_kind}Binding",
            "metadata": _meta(NAME, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": NAME},
            "subjects": [subject],
        })  # fmt: skip
    return out


PORTS: Final = (
    ("tls-config", CONFIG_STREAM_PORT),  # HBONE, mutual TLS
    ("tls-ca", CONTROL_PLANE_PORT),
    ("http-monitoring", CONTROL_PLANE_METRICS_PORT),  # /metrics, /ready
)


def _resources(values: Values) -> Obj:
    requests = {"cpu": values.cpu_request, "memory": values.memory_request}
    limits = {"cpu": values.cpu_limit, "memory": values.memory_limit}
    out = {"requests": {k: v for k, v in requests.items() if v}}
    if any(limits.values()):
        out["limits"] = {k: v for k, v in limits.items() if v}
    return out


def controlplane_deployment(values: Values) -> Obj:
    command = [
        "ambit", "--log-level", values.log_level, "--log-format", "json",
        "controlplane", "--source", "kubernetes", "--ca-dir", CA_DIR,
        "--trust-domain", values.trust_domain, "--drain-seconds", str(DRAIN_SECONDS),
    ]  # fmt: skip
    container = {
        "name": "controlplane",
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "command": command,
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": CONTROL_PLANE_METRICS_PORT},
            "periodSeconds": 3,
            "failureThreshold": 2,
        },
        "resources": _resources(values),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "ca", "mountPath": CA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_labels = {**_labels(NAME), LABEL_DATAPLANE_MODE: "none"}  # never captured itself
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(NAME, SYSTEM_NAMESPACE),
        "spec": {
            "replicas": values.replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "ca", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    }


def controlplane_service() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(NAME, SYSTEM_NAMESPACE),
        "spec": {
            "selector": {"app": NAME},
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"}
                      for n, p in PORTS],
        },
    }  # fmt: skip


def namespace() -> Obj:
    meta = _meta(SYSTEM_NAMESPACE, component=None)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service_account() -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, SYSTEM_NAMESPACE)}


def manifests(values: Values | None = None) -> list[Obj]:
    """Everything ``ambit install`` prints, in the order it is applied."""
    values = values or Values()
    return [
        namespace(),
        service_account(),
        *rbac(),
        controlplane_service(),
        controlplane_deployment(values),
    ]


def keys_help(defaults: Values | None = None) -> Mapping[str, object]:
    """Each ``--set`` key and its default."""
    defaults = defaults or Values()
    return {key: getattr(defaults, f.name) for key, f in KEYS.items()}
