"""The waypoint deployer, pure: what a waypoint Gateway becomes, as Istio's deployer makes
it for a Gateway of class ``istio-waypoint``.

A Gateway of a waypoint class (:data:`mesh.constants.WAYPOINT_CLASSES`) in namespace N
gets, in N:

- ServiceAccount ``<gateway>``: the waypoint's identity is
  ``spiffe://<td>/ns/N/sa/<gateway>``;
- Service ``<gateway>``: ports ``mesh`` 15008 (appProtocol ``all``) and ``status-port``
  15021 (``tcp``), selecting ``gateway.networking.k8s.io/gateway-name: <gateway>``;
  its key is the waypoint's, so translation finds the waypoint running once this
  Service has a meshed endpoint;
- Pod ``<gateway>-<5 hex digits of a hash of N/gateway>`` (stable: the same Gateway
  always names the same pod) with that label and ``ambit.io/dataplane-mode: none`` (no
  node agent captures it: it speaks HBONE itself), ``serviceAccountName: <gateway>``, and a
  command that runs ``ambit waypoint run`` with exactly the flags
  :class:`waypoint.config.WaypointConfig` is parsed from.

Every object made carries ``ambit.io/managed-by: waypoint-deployer``, the Gateway's
``spec.infrastructure`` labels and annotations (the deployer's own labels win) and, in
its document, a controlling ``ownerReference`` to its Gateway (with the Gateway's uid
once it has one, and ``blockOwnerDeletion``): it exists while its Gateway does, and
changes with it. A Gateway of another class
gets nothing. Each object is built as a document and read back through
:func:`k8s.manifests.parse_object`, so it is exactly what an API server would have
stored; a Gateway whose name cannot name those objects (a Service name is at most 63
characters and starts with a letter) gets an error instead.

Where the waypoint finds the control plane, the CA, its token and the trust bundle is
the deployment's (:class:`DeployerSettings`): local mode gives the bridge address and
files in its state directory. On a cluster :mod:`k8s.waypoint_kube` makes the same
ServiceAccount and Service, and a Deployment where local mode has a Pod.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from k8s import manifests as m
from k8s.manifest_reader import ManifestError, Pairs
from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    CONTROL_PLANE_SERVICE_ACCOUNT,
    DEFAULT_TRUST_DOMAIN,
    HBONE_PORT,
    LABEL_DATAPLANE_MODE,
    LABEL_GATEWAY_NAME,
    LABEL_MANAGED_BY,
    READINESS_PORT,
    SYSTEM_NAMESPACE,
    WAYPOINT_CLASSES,
)
from mesh.model import GATEWAY_GROUP

MANAGED_BY: Final = "waypoint-deployer"  # the value of LABEL_MANAGED_BY
CONTAINER: Final = "waypoint"
# The waypoint's ports, as Istio's deployer names them: (name, port, Service appProtocol).
PORTS: Final = (("mesh", HBONE_PORT, "all"), ("status-port", READINESS_PORT, "tcp"))
_CONTROL_PLANE_HOST: Final = f"{CONTROL_PLANE_SERVICE_ACCOUNT}.{SYSTEM_NAMESPACE}.svc"


@dataclass(frozen=True)
class DeployerSettings:
    """What every waypoint pod of a deployment is told, besides its own Gateway."""

    control_plane: str = f"{_CONTROL_PLANE_HOST}:{CONFIG_STREAM_PORT}"  # HOST:PORT
    ca: str = f"{_CONTROL_PLANE_HOST}:{CONTROL_PLANE_PORT}"
    token_dir: Path = Path("/var/run/secrets/ambit/tokens")  # <dir>/<ns>/<sa>/token
    trust_bundle: Path = Path("/var/run/secrets/ambit/ca/root-cert.pem")
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    drain_seconds: float = 25.0  # below the pod's grace period
    python: str = sys.executable
    env: Pairs = ()  # the container's environment (local mode: PYTHONPATH)

    def token_file(self, namespace: str, service_account: str) -> Path:
        return self.token_dir / namespace / service_account / "token"


@dataclass(frozen=True)
class WaypointObjects:
    """What one waypoint Gateway becomes, typed, with the documents they were read from."""

    service_account: m.ServiceAccount
    service: m.Service
    pod: m.Pod
    documents: tuple[Mapping[str, Any], ...]

    @property
    def objects(self) -> tuple[m.ServiceAccount, m.Service, m.Pod]:
        return self.service_account, self.service, self.pod


def is_waypoint(gateway: m.Gateway) -> bool:
    return gateway.gateway_class in WAYPOINT_CLASSES


def pod_name(gateway: m.Gateway) -> str:
    """``<gateway>-<suffix>``: the same for the same Gateway, whatever else changes."""
    return waypoint_pod_name(gateway.namespace, gateway.name)


def waypoint_pod_name(namespace: str, name: str) -> str:
    """The pod of the waypoint Gateway ``namespace/name`` (:func:`pod_name`)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()
    return f"{name}-{digest[:5]}"


def waypoint_flags(gateway: m.Gateway, settings: DeployerSettings) -> list[str]:
    """The flags of ``ambit waypoint run`` for this Gateway (what
    :class:`waypoint.config.WaypointConfig` is parsed from)."""
    namespace, name = gateway.namespace, gateway.name
    return [
        "--namespace", namespace,
        "--name", name,
        "--control-plane", settings.control_plane,
        "--ca", settings.ca,
        "--token-file", str(settings.token_file(namespace, name)),
        "--trust-bundle", str(settings.trust_bundle),
        "--trust-domain", settings.trust_domain,
        "--drain-seconds", f"{settings.drain_seconds:g}",
    ]  # fmt: skip


def run_command(gateway: m.Gateway, settings: DeployerSettings) -> list[str]:
    """The waypoint pod's command in local mode: ``ambit waypoint run`` for this Gateway,
    by this Python."""
    return [settings.python, "-m", "ambit.cli", "--log-format", "json", "waypoint", "run",
            *waypoint_flags(gateway, settings)]  # fmt: skip


def owner_reference(gateway: m.Gateway) -> dict[str, Any]:
    """The Gateway as the controlling owner of what is made for it (with its uid once it
    has one): the garbage collector deletes the objects with their Gateway."""
    owner: dict[str, Any] = {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "Gateway",
        "name": gateway.name,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    if gateway.uid:
        owner["uid"] = gateway.uid
    return owner


def object_metadata(
    gateway: m.Gateway, name: str, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``metadata`` of an object made for ``gateway``: ``labels`` and the Gateway's
    ``spec.infrastructure`` labels and annotations, under the deployer's own labels."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": gateway.namespace,
        "labels": {
            **dict(gateway.infrastructure_labels), **(labels or {}),
            LABEL_GATEWAY_NAME: gateway.name, LABEL_MANAGED_BY: MANAGED_BY,
        },
        "ownerReferences": [owner_reference(gateway)],
    }  # fmt: skip
    if gateway.infrastructure_annotations:
        meta["annotations"] = dict(gateway.infrastructure_annotations)
    return meta


def service_account_document(gateway: m.Gateway) -> dict[str, Any]:
    """The waypoint's ServiceAccount: its identity."""
    meta = object_metadata(gateway, gateway.name)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def service_document(gateway: m.Gateway) -> dict[str, Any]:
    """The waypoint's Service: 15008 and 15021, selecting its pods. It carries the
    Gateway's own labels (``waypoint-for``...), as Istio's does."""
    name = gateway.name
    service_labels = {k: v for k, v in gateway.labels if k != LABEL_MANAGED_BY}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(gateway, name, service_labels),
        "spec": {
            "selector": {LABEL_GATEWAY_NAME: name},
            "ports": [
                {
                    "name": port_name,
                    "port": port,
                    "targetPort": port,
                    "protocol": "TCP",
                    "appProtocol": app_protocol,
                }
                for port_name, port, app_protocol in PORTS
            ],
        },
    }


def waypoint_documents(gateway: m.Gateway, settings: DeployerSettings) -> list[dict[str, Any]]:
    """The ServiceAccount, Service and Pod of a waypoint Gateway, as manifests."""
    return [
        service_account_document(gateway),
        service_document(gateway),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            # Never captured by a node agent: it speaks HBONE itself (as on Kubernetes).
            "metadata": object_metadata(gateway, pod_name(gateway), {LABEL_DATAPLANE_MODE: "none"}),
            "spec": {
                "serviceAccountName": gateway.name,
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": int(settings.drain_seconds) + 1,
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": "ambit",
                        "command": run_command(gateway, settings),
                        "env": [{"name": k, "value": v} for k, v in settings.env],
                        "ports": [
                            {"name": port_name, "containerPort": port, "protocol": "TCP"}
                            for port_name, port, _ in PORTS
                        ],
                    }
                ],
            },
        },
    ]


def waypoint_objects(gateway: m.Gateway, settings: DeployerSettings) -> WaypointObjects | None:
    """What ``gateway`` becomes: None unless it is of a waypoint class. Raises
    :class:`~k8s.manifest_reader.ManifestError` when its name cannot name those objects."""
    if not is_waypoint(gateway):
        return None
    documents = waypoint_documents(gateway, settings)
    where = f"the waypoint of Gateway {gateway.namespace}/{gateway.name}"
    account, service, pod = (m.parse_object(doc, where) for doc in documents)
    assert isinstance(account, m.ServiceAccount)
    assert isinstance(service, m.Service)
    assert isinstance(pod, m.Pod)
    return WaypointObjects(account, service, pod, tuple(documents))


def deploy(objects: Iterable[m.K8sObject], settings: DeployerSettings) -> list[m.Document]:
    """Every object the waypoint Gateways among ``objects`` become, each as a
    :class:`~k8s.manifests.Document`; a Gateway whose objects cannot be made is one
    Document with the error."""
    out: list[m.Document] = []
    for obj in objects:
        if not isinstance(obj, m.Gateway) or not is_waypoint(obj):
            continue
        where = f"Gateway {obj.namespace}/{obj.name}"
        try:
            made = waypoint_objects(obj, settings)
        except ManifestError as exc:
            out.append(m.Document(where, None, None, f"{exc} (rename the Gateway)"))
            continue
        assert made is not None
        typed: tuple[m.K8sObject, ...] = made.objects
        for made_obj, doc in zip(typed, made.documents, strict=True):
            out.append(m.Document(where, doc, made_obj))
    return out


def managed(obj: m.K8sObject) -> bool:
    """Whether ``obj`` carries the deployer's label."""
    return (LABEL_MANAGED_BY, MANAGED_BY) in obj.labels
