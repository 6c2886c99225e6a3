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
import os
from collections.abc import Callable, Mapping
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
    "KINDS",
    "POLICY_API_VERSIONS",
    "AuthorizationPolicy",
    "Container",
    "ContainerPort",
    "K8sObject",
    "KindInfo",
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
    "kind_info",
    "load",
    "loads",
    "parse_object",
]

POLICY_API_VERSIONS = ("security.ambit.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1")


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

    @property
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
    containers: list[Container] = []
    for i, item in enumerate(items):
        path = f"spec.containers[{i}]"
        c = r.mapping(item, path)
        env = []
        for j, e in enumerate(r.sequence(c.get("env"), f"{path}.env")):
            var = r.mapping(e, f"{path}.env[{j}]")
            if "valueFrom" not in var:
                name = r.env_name(var.get("name"), f"{path}.env[{j}].name")
                env.append((name, r.string(var.get("value"), f"{path}.env[{j}].value", "")))
        ports = []
        for j, p in enumerate(r.sequence(c.get("ports"), f"{path}.ports")):
            port = r.mapping(p, f"{path}.ports[{j}]")
            ports.append(
                ContainerPort(
                    port=r.port(port.get("containerPort"), f"{path}.ports[{j}].containerPort"),
                    name=r.port_name(port.get("name"), f"{path}.ports[{j}].name"),
                    protocol=r.string(port.get("protocol"), f"{path}.ports[{j}].protocol", "TCP"),
                )
            )
        if any(other.name == c.get("name") for other in containers):
            r.fail(f"{path}.name", f"{c.get('name')!r} is also the name of another container")
        containers.append(
            Container(
                name=r.label_name(c.get("name"), f"{path}.name"),
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
        node_name=r.name(spec.get("nodeName"), "spec.nodeName") if spec.get("nodeName") else "",
        service_account=r.name(sa, "spec.serviceAccountName", "default"),
        containers=tuple(containers),
        host_network=host_network,
        pod_ip=r.ip(status["podIP"], "status.podIP") if status.get("podIP") else None,
        phase=r.string(status.get("phase"), "status.phase", ""),
    )


def _read_service(r: Reader, doc: Mapping[str, object]) -> Service:
    meta = read_meta(r, doc, name_check=Reader.dns1035_name)
    spec = r.mapping(doc.get("spec"), "spec")
    ports: list[ServicePortSpec] = []
    items = r.sequence(spec.get("ports"), "spec.ports")
    for i, item in enumerate(items):
        p = r.mapping(item, f"spec.ports[{i}]")
        port = r.port(p.get("port"), f"spec.ports[{i}].port")
        target = p.get("targetPort", port)
        if isinstance(target, str) and target and not target.isdigit():
            target = r.port_name(target, f"spec.ports[{i}].targetPort")
        else:
            target = r.port(target, f"spec.ports[{i}].targetPort", text_ok=True)
        protocol = r.string(p.get("protocol"), f"spec.ports[{i}].protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            r.fail(f"spec.ports[{i}].protocol", f"must be TCP, UDP or SCTP, not {protocol!r}")
        name = r.label_name(p.get("name"), f"spec.ports[{i}].name") if p.get("name") else ""
        if len(items) > 1 and not name:
            r.fail(f"spec.ports[{i}].name", "required when a Service has more than one port")
        for j, other in enumerate(ports):
            if name and other.name == name:
                r.fail(f"spec.ports[{i}].name", f"{name!r} is also the name of spec.ports[{j}]")
            if (other.port, other.protocol) == (port, protocol):
                r.fail(f"spec.ports[{i}]", f"port {port}/{protocol} is also spec.ports[{j}]")
        ports.append(ServicePortSpec(port=port, target_port=target, name=name, protocol=protocol))
    cluster_ip = spec.get("clusterIP")
    headless = cluster_ip in (None, "", "None")
    return Service(
        **meta,
        selector=r.labels(spec.get("selector"), "spec.selector") or None,
        ports=tuple(ports),
        cluster_ip=None if headless else r.ip(cluster_ip, "spec.clusterIP"),
    )


@dataclass(frozen=True)
class KindInfo:
    """One kind ambit understands, declared once: how it is read, what the CLI calls it,
    and whether it lives in a namespace. Everything that lists kinds (the object store's
    listing gate, ``ambit get``, parse errors) reads :data:`KINDS`."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    api_versions: tuple[str, ...]  # the first is the one shown
    namespaced: bool
    read: Callable[[Reader, Mapping[str, object]], K8sObject]

    @property
    def group(self) -> str:
        return self.api_versions[0].rpartition("/")[0]

    @property
    def resource(self) -> str:
        """kubectl's name for it: ``pods``, ``authorizationpolicies.security.istio.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _read_namespace(r: Reader, doc: Mapping[str, object]) -> Namespace:
    return Namespace(**read_meta(r, doc, namespaced=False, name_check=Reader.label_name))


def _read_service_account(r: Reader, doc: Mapping[str, object]) -> ServiceAccount:
    return ServiceAccount(**read_meta(r, doc))


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "namespaces", ("ns",), ("v1",), False, _read_namespace),
    KindInfo("ServiceAccount", "serviceaccounts", ("sa",), ("v1",), True, _read_service_account),
    KindInfo("Pod", "pods", ("po",), ("v1",), True, _read_pod),
    KindInfo("Service", "services", ("svc",), ("v1",), True, _read_service),
    KindInfo(
        "AuthorizationPolicy", "authorizationpolicies", ("ap",), POLICY_API_VERSIONS, True,
        read_authorization,
    ),
    KindInfo(
        "PeerAuthentication", "peerauthentications", ("pa",), POLICY_API_VERSIONS, True,
        read_peer_authentication,
    ),
)  # fmt: skip
_BY_KIND = {k.kind: k for k in KINDS}


def kind_info(name: str) -> KindInfo | None:
    """The kind called ``name``: its kind, plural, singular or short name, any case, with
    or without its API group (``pod``, ``po``, ``authorizationpolicies.security.istio.io``)."""
    wanted = name.lower()
    for info in KINDS:
        names = {info.kind.lower(), info.plural, *info.short_names, info.resource}
        if wanted in names:
            return info
    return None


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
    if (isinstance(name, str) and not name.isprintable()) or len(str(name)) > 253:
        name = repr(str(name)[:60])  # an odd name is shown quoted, on one line
    if not isinstance(namespace, str) or not namespace.isprintable() or len(namespace) > 63:
        namespace = repr(str(namespace)[:60])
    info = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if info is None:
        supported = ", ".join(k.kind for k in KINDS)
        what = f"kind {kind!r}" if kind is not None else "kind"
        Reader(where).fail("kind", f"{what} is not supported; supported kinds: {supported}")
    label = f"{kind} {name}" if not info.namespaced else f"{kind} {namespace}/{name}"
    r = Reader(f"{where} ({label if isinstance(name, str) else kind})")
    if api_version not in info.api_versions:
        r.fail(
            "apiVersion",
            f"{api_version!r} is not supported for {kind}; use {' or '.join(info.api_versions)}",
        )
    return info.read(r, doc)


def _documents(text: str, filename: str) -> list[tuple[str, K8sObject]]:
    try:
        docs = list(yaml.safe_load_all(text))
    except RecursionError:
        raise ManifestError(f"{filename}: nested too deeply to be a manifest") from None
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
