"""Kubernetes manifests (YAML files, or dicts from the API) -> small typed objects.

Owns the edge where raw dicts become typed: Namespace, ServiceAccount, Pod, Service,
AuthorizationPolicy and PeerAuthentication (``security.ambit.io/v1``, also Istio's
``security.istio.io/v1`` and ``v1beta1``). Only the fields later parts use are kept.
Every problem is a :class:`ManifestError` naming the file, the document and the field
path, e.g. ``demo.yaml: document 3 (Service default/web): spec.ports[0].port: must be
an integer 1-65535``. Nothing past this module sees a raw dict.

The core kinds are read here and keep what they need, ignoring the rest, as real
manifests carry much more; the policy kinds (read strictly) are in
:mod:`k8s.policy_manifests`, the typed reads shared by both in
:mod:`k8s.manifest_reader`. Everything is re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import yaml

from k8s.manifest_reader import ManifestError, Meta, Pairs, Reader, kind_of, read_meta
from k8s.policy_manifests import (
    AuthorizationPolicy,
    PeerAuthentication,
    PolicyCondition,
    PolicyOperation,
    PolicyRule,
    PolicySource,
    read_authorization,
    read_peer_authentication,
)

__all__ = [
    "CORE_KINDS",
    "POLICY_API_VERSIONS",
    "POLICY_KINDS",
    "AuthorizationPolicy",
    "Container",
    "ContainerPort",
    "K8sObject",
    "ManifestError",
    "Namespace",
    "Pairs",
    "PeerAuthentication",
    "Pod",
    "PolicyCondition",
    "PolicyOperation",
    "PolicyRule",
    "PolicySource",
    "Service",
    "ServiceAccount",
    "ServicePortSpec",
    "load",
    "loads",
    "parse_object",
]

POLICY_API_VERSIONS = ("security.ambit.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1")
CORE_KINDS = ("Namespace", "ServiceAccount", "Pod", "Service")
POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication")


@dataclass(frozen=True, kw_only=True)
class Namespace(Meta):
    namespace: str = ""


@dataclass(frozen=True, kw_only=True)
class ServiceAccount(Meta):
    pass


@dataclass(frozen=True, kw_only=True)
class ContainerPort:
    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, kw_only=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Pairs = ()  # literal values only; ``valueFrom`` entries are left out
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Pod(Meta):
    node_name: str = ""
    service_account: str = "default"
    containers: tuple[Container, ...] = ()
    host_network: bool = False
    pod_ip: str | None = None
    phase: str = ""

    @functools.cached_property
    def named_ports(self) -> tuple[tuple[str, int], ...]:
        """``(name, port)`` of every named container port, for named targetPorts."""
        return tuple((p.name, p.port) for c in self.containers for p in c.ports if p.name)

    def with_ip(self, ip: str) -> Pod:
        return dataclasses.replace(self, pod_ip=ip)


@dataclass(frozen=True, kw_only=True)
class ServicePortSpec:
    port: int
    target_port: int | str  # a number, or the name of a container port
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, kw_only=True)
class Service(Meta):
    selector: Pairs | None = None
    ports: tuple[ServicePortSpec, ...] = ()
    cluster_ip: str | None = None  # None: not allocated yet, or headless

    def with_cluster_ip(self, ip: str) -> Service:
        return dataclasses.replace(self, cluster_ip=ip)


K8sObject: TypeAlias = (
    Namespace | ServiceAccount | Pod | Service | AuthorizationPolicy | PeerAuthentication
)


def _read_pod(r: Reader, doc: Mapping[str, object]) -> Pod:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec")
    items = r.sequence(spec.get("containers"), "spec.containers")
    if not items:
        r.fail("spec.containers", "a Pod needs at least one container")
    containers = []
    for i, item in enumerate(items):
        path = f"spec.containers[{i}]"
        c = r.mapping(item, path)
        env = []
        for j, e in enumerate(r.sequence(c.get("env"), f"{path}.env")):
            var = r.mapping(e, f"{path}.env[{j}]")
            if "valueFrom" not in var:
                name = r.string(var.get("name"), f"{path}.env[{j}].name")
                env.append((name, r.string(var.get("value"), f"{path}.env[{j}].value", "")))
        ports = []
        for j, p in enumerate(r.sequence(c.get("ports"), f"{path}.ports")):
            port = r.mapping(p, f"{path}.ports[{j}]")
            ports.append(
                ContainerPort(
                    port=r.port(port.get("containerPort"), f"{path}.ports[{j}].containerPort"),
                    name=r.string(port.get("name"), f"{path}.ports[{j}].name", ""),
                    protocol=r.string(port.get("protocol"), f"{path}.ports[{j}].protocol", "TCP"),
                )
            )
        containers.append(
            Container(
                name=r.string(c.get("name"), f"{path}.name"),
                image=r.string(c.get("image"), f"{path}.image", ""),
                command=r.strings(c.get("command"), f"{path}.command"),
                args=r.strings(c.get("args"), f"{path}.args"),
                env=tuple(env),
                ports=tuple(ports),
            )
        )
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        r.fail("spec.hostNetwork", f"must be true or false, not {host_network!r}")
    status = r.mapping(doc.get("status"), "status")
    sa = spec.get("serviceAccountName", spec.get("serviceAccount"))
    return Pod(
        **meta,
        node_name=r.string(spec.get("nodeName"), "spec.nodeName", ""),
        service_account=r.name(sa, "spec.serviceAccountName", "default"),
        containers=tuple(containers),
        host_network=host_network,
        pod_ip=r.ip(status["podIP"], "status.podIP") if status.get("podIP") else None,
        phase=r.string(status.get("phase"), "status.phase", ""),
    )


def _read_service(r: Reader, doc: Mapping[str, object]) -> Service:
    meta = read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec")
    ports = []
    for i, item in enumerate(r.sequence(spec.get("ports"), "spec.ports")):
        p = r.mapping(item, f"spec.ports[{i}]")
        port = r.port(p.get("port"), f"spec.ports[{i}].port")
        target = p.get("targetPort", port)
        if not (isinstance(target, str) and target and not target.isdigit()):
            target = r.port(target, f"spec.ports[{i}].targetPort", text_ok=True)
        protocol = r.string(p.get("protocol"), f"spec.ports[{i}].protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            r.fail(f"spec.ports[{i}].protocol", f"must be TCP, UDP or SCTP, not {protocol!r}")
        name = r.string(p.get("name"), f"spec.ports[{i}].name", "")
        ports.append(ServicePortSpec(port=port, target_port=target, name=name, protocol=protocol))
    cluster_ip = spec.get("clusterIP")
    headless = cluster_ip in (None, "", "None")
    return Service(
        **meta,
        selector=r.labels(spec.get("selector"), "spec.selector") or None,
        ports=tuple(ports),
        cluster_ip=None if headless else r.ip(cluster_ip, "spec.clusterIP"),
    )


def parse_object(doc: object, where: str = "<object>") -> K8sObject:
    """One Kubernetes object (a dict as YAML or the API gives it) -> its typed form.

    ``where`` starts every error message (a file and document, or an API watch).
    """
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{where}: must be a mapping with apiVersion and kind, not {kind_of(doc)}"
        )
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    namespace = (meta.get("namespace") if isinstance(meta, dict) else None) or "default"
    label = f"{kind} {name}" if kind == "Namespace" else f"{kind} {namespace}/{name}"
    r = Reader(f"{where} ({label if isinstance(name, str) else kind})")
    if kind in CORE_KINDS:
        wanted: tuple[str, ...] = ("v1",)
    elif kind in POLICY_KINDS:
        wanted = POLICY_API_VERSIONS
    else:
        r = Reader(where)
        supported = ", ".join(CORE_KINDS + POLICY_KINDS)
        what = f"kind {kind!r}" if kind is not None else "kind"
        r.fail("kind", f"{what} is not supported; supported kinds: {supported}")
    if api_version not in wanted:
        r.fail(
            "apiVersion", f"{api_version!r} is not supported for {kind}; use {' or '.join(wanted)}"
        )
    if kind == "Namespace":
        return Namespace(**read_meta(r, doc, namespaced=False))
    if kind == "ServiceAccount":
        return ServiceAccount(**read_meta(r, doc))
    if kind == "Pod":
        return _read_pod(r, doc)
    if kind == "Service":
        return _read_service(r, doc)
    if kind == "AuthorizationPolicy":
        return read_authorization(r, doc)
    return read_peer_authentication(r, doc)


def _documents(text: str, filename: str) -> list[tuple[str, K8sObject]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{filename}: {at}not valid YAML: {problem}") from None
    return [
        (where, parse_object(doc, where))
        for i, doc in enumerate(docs, start=1)
        if doc is not None
        for where in [f"{filename}: document {i}"]
    ]


def loads(text: str, filename: str = "<string>") -> tuple[K8sObject, ...]:
    """Every object of a (multi-document) YAML text. Empty documents are skipped."""
    return tuple(obj for _, obj in _documents(text, filename))


def load(*paths: str | os.PathLike[str]) -> tuple[K8sObject, ...]:
    """Every object of the given YAML files, in order. The same object twice is an error."""
    objects: list[K8sObject] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in paths:
        filename = os.fspath(path)
        try:
            with open(filename, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ManifestError(f"{filename}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ManifestError(f"{filename}: cannot read: not UTF-8 text") from None
        for where, obj in _documents(text, filename):
            kind = type(obj).__name__
            key = (kind, obj.namespace, obj.name)
            if key in seen:
                name = obj.name if kind == "Namespace" else f"{obj.namespace}/{obj.name}"
                raise ManifestError(f"{where} ({kind} {name}): defined twice, first in {seen[key]}")
            seen[key] = where
            objects.append(obj)
    return tuple(objects)
