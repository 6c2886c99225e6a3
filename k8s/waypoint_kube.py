"""The waypoint deployer on Kubernetes, pure: what a waypoint Gateway becomes on a
cluster, and what the deployer must do about the Gateways it sees.

A Gateway of a class the deployer serves (:attr:`KubeDeployerSettings.classes`, by
default ``ambit-waypoint`` alone: on a cluster ``istio-waypoint`` Gateways are
istiod's) in namespace N gets, in N, as :mod:`k8s.waypoint_deployer` makes them for
local mode but with a Deployment instead of a Pod:

- ServiceAccount ``<gateway>`` and Service ``<gateway>`` (15008 ``mesh``, 15021
  ``status-port``), exactly the local ones;
- Deployment ``<gateway>`` (``apps/v1``), selecting
  ``gateway.networking.k8s.io/gateway-name: <gateway>``; ``replicas`` is not set, so
  the API server's default (1) holds until ``kubectl scale`` or an autoscaler changes
  it, and the deployer's applies never undo that. Its pod runs ``ambit waypoint run``
  with the flags of local mode, reads the projected service-account token for the CA's
  audience (``ambit-ca``) and the trust bundle (ConfigMap :data:`ROOT_CONFIG_MAP`, key
  ``root-cert.pem``, as Istio's ``istio-ca-root-cert``) where those flags point, is
  ready when ``/healthz/ready`` on 15021 answers, is scraped on 15020 (Istio's
  ``prometheus.io`` annotations), gets ``POD_NAME``, ``POD_NAMESPACE``, ``POD_IP``,
  ``NODE_NAME`` and ``SERVICE_ACCOUNT`` from the downward API, and carries
  ``ambit.io/dataplane-mode: none``: ztunnel never captures a waypoint.

Every object carries the Gateway's ``spec.infrastructure`` labels and annotations (the
pod template too), ``ambit.io/managed-by: waypoint-deployer``, and the Gateway as its
controlling owner (uid, ``blockOwnerDeletion``): deleting the Gateway deletes them.

:func:`plan` is the deployer's decision for a set of objects: every document wanted
(by API path), the Gateways whose objects must go (they left the class), and why a
Gateway gets nothing. The GatewayClass ``ambit-waypoint`` (:func:`gateway_class_document`)
is wanted always.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ca.kube import CA_AUDIENCE
from k8s import manifests as m
from k8s.gateway_manifests import foreign_waypoint_classes
from k8s.install import VERSION, pod_security_context
from k8s.manifest_reader import ManifestError
from k8s.waypoint_deployer import (
    CONTAINER,
    MANAGED_BY,
    PORTS,
    DeployerSettings,
    object_metadata,
    service_account_document,
    service_document,
    waypoint_documents,
    waypoint_flags,
)
from mesh.constants import (
    LABEL_DATAPLANE_MODE,
    LABEL_GATEWAY_NAME,
    LABEL_MANAGED_BY,
    METRICS_PORT,
    READINESS_PORT,
    WAYPOINT_CLASS,
    WAYPOINT_CLASSES,
    WAYPOINT_CONTROLLER,
)
from mesh.model import GATEWAY_GROUP

DEFAULT_IMAGE: Final = f"ambit:{VERSION}"  # ambit install's image
ROOT_CONFIG_MAP: Final = "ambit-ca-root-cert"  # in each namespace: the mesh's roots
ROOT_CONFIG_MAP_KEY: Final = "root-cert.pem"
TOKEN_SECONDS: Final = 43200  # the projected token's lifetime (the kubelet renews it)
READY_PATH: Final = "/healthz/ready"  # waypoint.main serves it on READINESS_PORT
METRICS_PATH: Final = "/metrics"
_ENTRYPOINT: Final = ("ambit", "--log-format", "json", "waypoint", "run")  # the image's
_TOKEN_VOLUME: Final = "ambit-token"
_ROOT_VOLUME: Final = "ambit-ca-root"
_DOWNWARD: Final = (
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("POD_IP", "status.podIP"),
    ("NODE_NAME", "spec.nodeName"),
    ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
)


def _kube_paths() -> DeployerSettings:
    return DeployerSettings(python="")  # the image's `ambit`, not a Python of this host


@dataclass(frozen=True)
class KubeDeployerSettings:
    """What the deployer on a cluster makes of every waypoint Gateway: the image, and
    where its pods find the control plane, the CA, their token and the trust bundle."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    classes: tuple[str, ...] = WAYPOINT_CLASSES  # but those another controller claims
    waypoint: DeployerSettings = field(default_factory=_kube_paths)
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    memory_limit: str = "1Gi"


def cluster_settings(image: str, trust_domain: str) -> KubeDeployerSettings:
    """The deployer's settings for ``ambit controlplane --source kubernetes``."""
    paths = DeployerSettings(python="", trust_domain=trust_domain)
    return KubeDeployerSettings(image=image, waypoint=paths)


def serves(
    gateway: m.Gateway, settings: KubeDeployerSettings, foreign: frozenset[str] = frozenset()
) -> bool:
    """Whether the deployer makes objects for ``gateway``: a class it serves that no other
    controller's GatewayClass claims (``foreign``)."""
    return gateway.gateway_class in settings.classes and gateway.gateway_class not in foreign


def container(gateway: m.Gateway, settings: KubeDeployerSettings) -> dict[str, Any]:
    """The waypoint's container: ``ambit waypoint run`` and what it reads."""
    paths = settings.waypoint
    token = paths.token_file(gateway.namespace, gateway.name)
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": f}}} for k, f in _DOWNWARD]
    ports = [(name, port) for name, port, _ in PORTS] + [("metrics", METRICS_PORT)]
    return {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [*_ENTRYPOINT, *waypoint_flags(gateway, paths)],
        "env": [*env, *({"name": k, "value": v} for k, v in paths.env)],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports],
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": READINESS_PORT},
            "periodSeconds": 5,
            "failureThreshold": 4,
        },
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": _TOKEN_VOLUME, "mountPath": str(token.parent), "readOnly": True},
            {"name": _ROOT_VOLUME, "mountPath": str(paths.trust_bundle.parent), "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _volumes(gateway: m.Gateway, settings: KubeDeployerSettings) -> list[dict[str, Any]]:
    paths = settings.waypoint
    token = paths.token_file(gateway.namespace, gateway.name)
    projected = {"audience": CA_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": token.name}
    bundle = {"key": ROOT_CONFIG_MAP_KEY, "path": paths.trust_bundle.name}
    return [
        {"name": _TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": projected}]}},
        {"name": _ROOT_VOLUME, "configMap": {"name": ROOT_CONFIG_MAP, "items": [bundle]}},
        {"name": "tmp", "emptyDir": {"medium": "Memory"}},
    ]


def deployment_document(gateway: m.Gateway, settings: KubeDeployerSettings) -> dict[str, Any]:
    """The waypoint's Deployment."""
    name = gateway.name
    meta = object_metadata(gateway, name)
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
              "prometheus.io/path": METRICS_PATH}  # fmt: skip
    template_meta = {
        "labels": {**meta["labels"], LABEL_DATAPLANE_MODE: "none"},
        "annotations": {**dict(gateway.infrastructure_annotations), **scrape},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {LABEL_GATEWAY_NAME: name}},
            "template": {
                "metadata": template_meta,
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,  # it never calls the API server
                    "terminationGracePeriodSeconds": int(settings.waypoint.drain_seconds) + 5,
                    "securityContext": pod_security_context(),
                    "containers": [container(gateway, settings)],
                    "volumes": _volumes(gateway, settings),
                },
            },
        },
    }


def kube_documents(gateway: m.Gateway, settings: KubeDeployerSettings) -> list[dict[str, Any]]:
    """ServiceAccount, Service and Deployment of a Gateway the deployer serves, in the
    order they are applied. Raises :class:`~k8s.manifest_reader.ManifestError` when the
    Gateway's name cannot name them (the local objects are read back to check it)."""
    where = f"the waypoint of Gateway {gateway.namespace}/{gateway.name}"
    for doc in waypoint_documents(gateway, settings.waypoint):
        m.parse_object(doc, where)
    return [
        service_account_document(gateway),
        service_document(gateway),
        deployment_document(gateway, settings),
    ]


def gateway_class_document() -> dict[str, Any]:
    """The GatewayClass of ambit's waypoints (its status is the status writer's)."""
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": WAYPOINT_CLASS},
        "spec": {
            "controllerName": WAYPOINT_CONTROLLER,
            "description": "ambit's waypoints: a Deployment per Gateway",
        },
    }


_PLURALS: Final = {
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    (f"{GATEWAY_GROUP}/v1", "GatewayClass"): "gatewayclasses",
}
MADE_KINDS: Final = (("v1", "ServiceAccount"), ("v1", "Service"), ("apps/v1", "Deployment"))


def api_path(api_version: str, kind: str, name: str, namespace: str = "") -> str:
    """The API server's path of one object of a kind the deployer writes."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{where}/{_PLURALS[(api_version, kind)]}/{name}"


def path_of(document: Mapping[str, Any]) -> str:
    meta = document["metadata"]
    kind = (document["apiVersion"], document["kind"])
    return api_path(*kind, meta["name"], meta.get("namespace", ""))


@dataclass(frozen=True)
class Leaver:
    """A Gateway the deployer does not serve: what it may have made for it (by path) is
    deleted if it carries the deployer's label and names this Gateway (uid) its owner."""

    namespace: str
    name: str
    uid: str

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(api_path(*kind, self.name, self.namespace) for kind in MADE_KINDS)


@dataclass(frozen=True)
class Plan:
    """What the deployer wants, for one view of the objects."""

    wanted: dict[str, Mapping[str, Any]]  # by API path, in the order they are applied
    leavers: tuple[Leaver, ...]
    refused: dict[tuple[str, str], str]  # (namespace, name) of a Gateway: why nothing


def plan(objects: Iterable[m.K8sObject], settings: KubeDeployerSettings) -> Plan:
    """The documents wanted for ``objects`` (the GatewayClass first), the Gateways not
    served whose objects may have to go, and the Gateways refused, with why. The
    GatewayClasses among ``objects`` say which waypoint classes another controller runs
    (:func:`k8s.gateway_manifests.foreign_waypoint_classes`): Istio's, when it is
    installed beside ambit."""
    objects = list(objects)
    foreign = foreign_waypoint_classes(o for o in objects if isinstance(o, m.GatewayClass))
    wanted: dict[str, Mapping[str, Any]] = {}
    leavers: list[Leaver] = []
    refused: dict[tuple[str, str], str] = {}
    klass = gateway_class_document()
    wanted[path_of(klass)] = klass
    for obj in objects:
        if not isinstance(obj, m.Gateway):
            continue
        if not serves(obj, settings, foreign):
            if obj.uid:
                leavers.append(Leaver(obj.namespace, obj.name, obj.uid))
            continue
        try:
            documents = kube_documents(obj, settings)
        except ManifestError as exc:
            refused[(obj.namespace, obj.name)] = f"{exc} (rename the Gateway)"
            continue
        for doc in documents:
            wanted[path_of(doc)] = doc
    return Plan(wanted, tuple(leavers), refused)


def owned_by(obj: Mapping[str, Any], leaver: Leaver) -> bool:
    """Whether an object read from the API server is the deployer's, for ``leaver``."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    owners = meta.get("ownerReferences") or []
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY and any(
        o.get("kind") == "Gateway" and o.get("uid") == leaver.uid for o in owners
    )
