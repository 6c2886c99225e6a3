"""What ``ambit install`` renders: the control plane on a cluster, as plain objects.

In :data:`mesh.constants.SYSTEM_NAMESPACE` (``ambit-system``): the Namespace, the control
plane's ServiceAccount, its RBAC, the Deployment running ``ambit controlplane --source
kubernetes`` (in-cluster credentials) and the Service the proxies reach it at (the name
the waypoint deployer gives them): 15010 the config stream, 15012 the CA, 15014
metrics and ``/ready``, 15016 ``ambit tap``'s API (callers authorized by the API server).

The control plane's permissions are declared once (:func:`permissions`): reading every
API resource its source watches (:data:`k8s.sources.resources.RESOURCES`, and CRDs),
writing the status of the objects it reports on, TokenReviews, events, the waypoint
deployer's objects, GatewayClasses, and in its own namespace only the CA's Secrets
(:mod:`ca.secret_keys`: reading ``cacerts`` and ``ambit-ca``, creating ``ambit-ca``)
and leases. The
ClusterRole and the Role are rendered from that list, and the tests ask the API server
(SubjectAccessReview) whether the ServiceAccount may do each of these things.

:class:`Values` holds what an operator sets (trust domain, image, resources, replicas),
from ``--set key=value`` (:func:`values_from`), with the keys the Helm charts' values
will have. The node side (the ztunnel DaemonSet, the node agent) is
:mod:`k8s.install_node`'s, rendered by ``ambit install --node``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import yaml

from ca.secret_keys import PLUGGED_SECRET_NAME, SECRET_NAME
from k8s.istio_kinds import ISTIO_GROUPS
from k8s.sources.resources import CRD_RESOURCE, RESOURCES
from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_METRICS_PORT,
    CONTROL_PLANE_PORT,
    CONTROL_PLANE_SERVICE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
    LABEL_DATAPLANE_MODE,
    SYSTEM_NAMESPACE,
    TAP_PORT,
)
from mesh.model import GATEWAY_GROUP

Obj = dict[str, Any]

NAME: Final = CONTROL_PLANE_SERVICE_ACCOUNT  # the ServiceAccount, Deployment, Service, roles
RUN_AS: Final = 1337  # Istio's proxy user


def pod_security_context() -> dict[str, Any]:
    """The pods ambit runs (control plane, waypoints): not root, the image's user, the
    runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


DRAIN_SECONDS: Final = 25  # below the pod's grace period
GRACE_SECONDS: Final = 30


class ValuesError(ValueError):
    """A value an operator set that cannot be rendered; the message names the key."""


VERSION: Final = "0.1.0"  # pyproject.toml's (a test checks): the image tag and the charts'


def value_field(
    default: object, key: str, check: Mapping[str, Any], hint: str, *, json: object = None
) -> Any:
    """A field of :class:`Values`: its ``--set`` key, its check as JSON Schema (``pattern``,
    ``enum``, ``minimum``/``maximum``, ``maxLength``: the chart's values.schema.json says
    the same, with ``json`` as its type if not the field's) and what to write instead."""
    metadata = {"key": key, "check": check, "hint": hint, "json": json}
    return dataclasses.field(default=default, metadata=metadata)


_QUANTITY: Final = {"pattern": r"^$|^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"}
_QUANTITY_HINT: Final = "is not a quantity (100m, 1Gi; empty: unset)"
_NUMBER_TOO: Final = ["string", "number"]  # a chart's values may say `cpu: 2`


@dataclass(frozen=True)
class Values:
    """What an operator sets, each field with its ``--set`` key and its check."""

    trust_domain: str = value_field(
        DEFAULT_TRUST_DOMAIN, "trustDomain",
        {"pattern": r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$"},
        "lower-case letters, digits, '.', '-' and '_', as a SPIFFE trust domain",
    )  # fmt: skip
    image: str = value_field(f"ambit:{VERSION}", "image", {"pattern": r"^\S+$", "maxLength": 4096},
                        "must be an image reference")  # fmt: skip
    image_pull_policy: str = value_field(
        "IfNotPresent", "imagePullPolicy", {"enum": ["Always", "IfNotPresent", "Never"]},
        "Always, IfNotPresent or Never",
    )  # fmt: skip
    replicas: int = value_field(1, "replicas", {"minimum": 0, "maximum": 100}, "0 to 100")
    cpu_request: str = value_field(
        "100m", "resources.requests.cpu", _QUANTITY, _QUANTITY_HINT, json=_NUMBER_TOO
    )
    memory_request: str = value_field(
        "256Mi", "resources.requests.memory", _QUANTITY, _QUANTITY_HINT, json=_NUMBER_TOO
    )
    cpu_limit: str = value_field(
        "", "resources.limits.cpu", _QUANTITY, _QUANTITY_HINT, json=_NUMBER_TOO
    )
    memory_limit: str = value_field(
        "1Gi", "resources.limits.memory", _QUANTITY, _QUANTITY_HINT, json=_NUMBER_TOO
    )
    log_level: str = value_field(
        "info", "logLevel", {"enum": ["debug", "info", "warning", "error"]},
        "debug, info, warning or error",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)


def check_fields(values: object) -> None:
    """:class:`ValuesError` for the first field of ``values`` (a dataclass of
    :func:`_value` fields) that fails its check. A field whose value is JSON (a list, a
    mapping: ``json`` ``array`` or ``object``) is checked by its ``check``'s ``python``
    function instead, which returns what is wrong or an empty string."""
    for f in dataclasses.fields(values):  # type: ignore[arg-type]
        value, check = getattr(values, f.name), f.metadata["check"]
        if "python" in check:
            wrong = check["python"](value)
            if wrong:
                raise ValuesError(f"{f.metadata['key']} {json.dumps(value)}: {wrong}")
            continue
        ok = (
            ("pattern" not in check or re.fullmatch(check["pattern"], value) is not None)
            and ("enum" not in check or value in check["enum"])
            and check.get("minimum", value) <= value <= check.get("maximum", value)
            and len(str(value)) <= check.get("maxLength", len(str(value)))
        )
        if not ok:
            raise ValuesError(f"{f.metadata['key']} {value!r}: {f.metadata['hint']}")


def keys_of(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """Each ``--set`` key of a values dataclass, and its field."""
    return {f.metadata["key"]: f for f in dataclasses.fields(cls)}


KEYS: Final = keys_of(Values)
V = TypeVar("V")


def values_from(settings: Iterable[str], base: Values | None = None) -> Values:
    """``key=value`` settings (``--set``) over ``base``; :class:`ValuesError` for an
    unknown key or a value that cannot be used."""
    return set_values(settings, base or Values())


def set_values(settings: Iterable[str], base: V) -> V:
    """``key=value`` settings over ``base``, a values dataclass: an integer field's text
    read as one, a JSON field's (``json`` ``array`` or ``object``) as JSON; an object is
    merged into the one before, as Helm merges it (``null`` removes a key), a list
    replaces it."""
    keys = keys_of(type(base))
    changes: dict[str, object] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ValuesError(f"{setting!r}: write KEY=VALUE")
        if key not in keys:
            raise ValuesError(f"unknown key {key!r}; known: {', '.join(keys)}")
        field = keys[key]
        if field.type in (int, "int"):
            try:
                changes[field.name] = int(text)
            except ValueError:
                raise ValuesError(f"{key} {text!r} is not an integer") from None
        elif field.metadata["json"] in ("array", "object"):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValuesError(f"{key} {text!r} is not JSON") from None
            if field.metadata["json"] == "object" and isinstance(value, dict):
                # As Helm merges an object into the default: null removes a key.
                before: dict[str, Any] = changes.get(field.name, getattr(base, field.name))  # type: ignore[assignment]
                merged = {**before, **value}
                value = {k: v for k, v in merged.items() if v is not None}
            changes[field.name] = value
        else:
            changes[field.name] = text
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class Permission:
    """Verbs on resources of one API group; ``namespaced``: only in ambit's namespace."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    namespaced: bool = False
    why: str = ""
    names: tuple[str, ...] = ()  # only these objects (never for create: no name to check)

    def rule(self) -> Obj:
        rule: Obj = {"apiGroups": [self.group], "resources": list(self.resources)}
        if self.names:
            rule["resourceNames"] = list(self.names)
        rule["verbs"] = list(self.verbs)
        return rule


CA_SECRETS: Final = (PLUGGED_SECRET_NAME, SECRET_NAME)  # in ambit-system (ca.secret_keys)
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
        Permission("authorization.k8s.io", ("subjectaccessreviews",), ("create",),
                   why="ambit tap: may the caller tap what it asks for"),
        Permission("", ("events",), ("create", "patch"), why="events on objects"),
        Permission("events.k8s.io", ("events",), ("create", "patch"), why="events on objects"),
        Permission("apps", ("deployments",), READ + WRITE, why="the waypoint deployer"),
        Permission("", ("services", "serviceaccounts"), WRITE, why="the waypoint deployer"),
        Permission(GATEWAY_GROUP, ("gatewayclasses",), ("create", "update", "patch"),
                   why="the waypoint GatewayClass"),
        Permission(GATEWAY_GROUP, ("gateways/finalizers",), ("update",),
                   why="the deployer's objects block their Gateway's deletion"
                   " (OwnerReferencesPermissionEnforcement)"),
        Permission("", ("secrets",), ("get",), namespaced=True, names=CA_SECRETS,
                   why="the CA's keys: an operator's cacerts, else ambit-ca"),
        Permission("", ("secrets",), ("create",), namespaced=True,
                   why="ambit-ca, created once by the first control plane"),
        Permission("coordination.k8s.io", ("leases",), (*READ, "create", "update", "patch"),
                   namespaced=True, why="leader election, in its own namespace"),
        Permission("", ("configmaps",), ("get", "create", "update", "patch"),
                   why="the trust bundle, ambit-ca-root-cert, in every namespace"),
        *(Permission(g, ("*",), ("list",), why="Istio's kinds ambit ignores, reported")
          for g in ISTIO_GROUPS),
    )  # fmt: skip


def object_labels(component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": "ambit", "app.kubernetes.io/version": VERSION}
    if component:
        labels = {"app": component, "app.kubernetes.io/name": component, **labels}
    return labels


def object_meta(name: str, namespace: str | None = None, component: str | None = NAME) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = object_labels(component)
    return meta


def rbac() -> list[Obj]:
    """The ClusterRole and Role of :func:`permissions`, bound to the ServiceAccount."""
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": SYSTEM_NAMESPACE}
    out: list[Obj] = []
    for kind, namespace in (("Cluster", None), ("", SYSTEM_NAMESPACE)):
        rules = [p.rule() for p in permissions() if p.namespaced == (namespace is not None)]
        role_kind = f"{kind}Role"
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind,
                    "metadata": object_meta(NAME, namespace), "rules": rules})  # fmt: skip
        out.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": f"{role_kind}Binding",
            "metadata": object_meta(NAME, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": NAME},
            "subjects": [subject],
        })  # fmt: skip
    return out


PORTS: Final = (
    ("tls-config", CONFIG_STREAM_PORT),  # HBONE, mutual TLS
    ("tls-ca", CONTROL_PLANE_PORT),
    ("http-monitoring", CONTROL_PLANE_METRICS_PORT),  # /metrics, /ready
    ("tls-tap", TAP_PORT),  # ambit tap and ambit why: the callers' own credentials
)


def _resources(values: Values) -> Obj:
    return resources_block(
        values.cpu_request, values.memory_request, values.cpu_limit, values.memory_limit
    )


def resources_block(
    cpu_request: str, memory_request: str, cpu_limit: str, memory_limit: str
) -> Obj:
    """A container's ``resources``; an empty value is left out (unset)."""
    requests = {"cpu": cpu_request, "memory": memory_request}
    limits = {"cpu": cpu_limit, "memory": memory_limit}
    out = {"requests": {k: v for k, v in requests.items() if v}}
    if any(limits.values()):
        out["limits"] = {k: v for k, v in limits.items() if v}
    return out


def controlplane_deployment(values: Values) -> Obj:
    command = [
        "ambit", "--log-level", values.log_level, "--log-format", "json",
        "controlplane", "--source", "kubernetes",
        "--trust-domain", values.trust_domain, "--drain-seconds", str(DRAIN_SECONDS),
        "--waypoint-image", values.image, "--tap-kubernetes",
    ]  # fmt: skip
    container = {
        "name": "controlplane",
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "command": command,
        # The Lease's holder identity (k8s.leader): the pod's name.
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
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
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_labels = {**object_labels(NAME), LABEL_DATAPLANE_MODE: "none"}  # never captured itself
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(NAME, SYSTEM_NAMESPACE),
        "spec": {
            "replicas": values.replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [
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
        "metadata": object_meta(NAME, SYSTEM_NAMESPACE),
        "spec": {
            "selector": {"app": NAME},
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"}
                      for n, p in PORTS],
        },
    }  # fmt: skip


def namespace() -> Obj:
    meta = object_meta(SYSTEM_NAMESPACE, component=None)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service_account() -> Obj:
    meta = object_meta(NAME, SYSTEM_NAMESPACE)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


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


class _Dumper(yaml.SafeDumper):
    """No ``&id001`` anchors where the same schema appears twice: each spelled out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(documents: Iterable[Mapping[str, Any]]) -> str:
    """Documents as one multi-document YAML text, keys in the order they were built."""
    return yaml.dump_all(
        [dict(d) for d in documents],
        Dumper=_Dumper,
        sort_keys=False,
        explicit_start=True,
        allow_unicode=True,
        width=100,
    )
