"""Kubernetes manifests (YAML files, or dicts from the API) -> small typed objects.

Owns the edge where raw dicts become typed: Namespace, ServiceAccount, Pod, Service,
EndpointSlice (``discovery.k8s.io/v1``), Node, AuthorizationPolicy, PeerAuthentication
and RequestAuthentication (``security.ambit.io/v1``, also Istio's ``security.istio.io/v1``
and ``v1beta1``), Gateway API's GatewayClass, Gateway, HTTPRoute and GRPCRoute
(``gateway.networking.k8s.io/v1``), and the traffic kinds of :mod:`k8s.traffic_manifests`
(DestinationRule, XBackendTrafficPolicy, FaultInjection, LocalRateLimit). Only the fields
later parts use are kept.
Every problem is a :class:`ManifestError` naming the file, the document and the field
path, e.g. ``demo.yaml: document 3 (Service default/web): spec.ports[0].port: must be
an integer 1-65535``. Nothing past this module sees a raw dict.

This module declares every kind once (:data:`KINDS`) and reads documents and files.
The core kinds (keeping what they need, ignoring the rest, as real manifests carry much
more) are in :mod:`k8s.core_manifests` and :mod:`k8s.discovery_manifests`; the policy
kinds (read strictly) are in :mod:`k8s.policy_manifests`, the Gateway API kinds (strictly too) in
:mod:`k8s.gateway_manifests` and :mod:`k8s.route_manifests`, the typed reads shared by
all in :mod:`k8s.manifest_reader`. Everything is re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import yaml

from k8s.core_manifests import (
    Container,
    ContainerPort,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    ServicePortSpec,
    read_namespace,
    read_pod,
    read_service,
    read_service_account,
)
from k8s.discovery_manifests import (
    EndpointSlice,
    Node,
    SliceEndpoint,
    SlicePort,
    read_endpoint_slice,
    read_node,
)
from k8s.gateway_manifests import (
    GATEWAY_API_VERSIONS,
    GRPC_ROUTE_API_VERSIONS,
    Gateway,
    GatewayClass,
    read_gateway,
    read_gateway_class,
)
from k8s.istio_kinds import ignored_kind
from k8s.manifest_reader import ManifestError, Pairs, Reader, kind_of
from k8s.policy_manifests import (
    AuthorizationPolicy,
    PeerAuthentication,
    PolicyCondition,
    PolicyOperation,
    PolicyRule,
    PolicySource,
    PolicyTargetRef,
    RequestAuthentication,
    read_authorization,
    read_peer_authentication,
    read_request_authentication,
)
from k8s.route_manifests import GRPCRoute, HTTPRoute, read_grpc_route, read_http_route
from k8s.traffic_manifests import (
    BACKEND_TRAFFIC_POLICY_API_VERSIONS,
    DESTINATION_RULE_API_VERSIONS,
    FILTER_API_VERSIONS,
    BackendTrafficPolicy,
    DestinationRule,
    FaultInjection,
    LocalRateLimit,
    read_backend_traffic_policy,
    read_destination_rule,
    read_fault_injection,
    read_local_rate_limit,
)

__all__ = [
    "KINDS",
    "POLICY_API_VERSIONS",
    "AuthorizationPolicy",
    "BackendTrafficPolicy",
    "Container",
    "ContainerPort",
    "DestinationRule",
    "Document",
    "EndpointSlice",
    "FaultInjection",
    "GRPCRoute",
    "Gateway",
    "GatewayClass",
    "HTTPRoute",
    "K8sObject",
    "KindInfo",
    "LocalRateLimit",
    "ManifestError",
    "Namespace",
    "Node",
    "Pairs",
    "PeerAuthentication",
    "Pod",
    "PolicyCondition",
    "PolicyOperation",
    "PolicyRule",
    "PolicySource",
    "PolicyTargetRef",
    "RequestAuthentication",
    "Service",
    "ServiceAccount",
    "ServicePortSpec",
    "SliceEndpoint",
    "SlicePort",
    "kind_info",
    "load",
    "loads",
    "parse_object",
    "read_documents",
    "read_files",
]

POLICY_API_VERSIONS = ("security.ambit.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1")


K8sObject: TypeAlias = (
    Namespace
    | ServiceAccount
    | Pod
    | Service
    | EndpointSlice
    | Node
    | AuthorizationPolicy
    | PeerAuthentication
    | RequestAuthentication
    | GatewayClass
    | Gateway
    | HTTPRoute
    | GRPCRoute
    | DestinationRule
    | BackendTrafficPolicy
    | FaultInjection
    | LocalRateLimit
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
    api_kind: str = ""  # the kind as its API serves it, when that differs (XBackendTrafficPolicy)

    @property
    def served_kind(self) -> str:
        """The kind its API resource serves (what a status document names)."""
        return self.api_kind or self.kind

    @property
    def group(self) -> str:
        return self.api_versions[0].rpartition("/")[0]

    @property
    def resource(self) -> str:
        """kubectl's name for it: ``pods``, ``authorizationpolicies.security.istio.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "namespaces", ("ns",), ("v1",), False, read_namespace),
    KindInfo("ServiceAccount", "serviceaccounts", ("sa",), ("v1",), True, read_service_account),
    KindInfo("Pod", "pods", ("po",), ("v1",), True, read_pod),
    KindInfo("Service", "services", ("svc",), ("v1",), True, read_service),
    KindInfo(
        "EndpointSlice", "endpointslices", (), ("discovery.k8s.io/v1",), True,
        read_endpoint_slice,
    ),
    KindInfo("Node", "nodes", ("no",), ("v1",), False, read_node),
    KindInfo(
        "AuthorizationPolicy", "authorizationpolicies", ("ap",), POLICY_API_VERSIONS, True,
        read_authorization,
    ),
    KindInfo(
        "PeerAuthentication", "peerauthentications", ("pa",), POLICY_API_VERSIONS, True,
        read_peer_authentication,
    ),
    KindInfo(
        "RequestAuthentication", "requestauthentications", (), POLICY_API_VERSIONS, True,
        read_request_authentication,
    ),
    KindInfo(
        "GatewayClass", "gatewayclasses", ("gc",), GATEWAY_API_VERSIONS, False,
        read_gateway_class,
    ),
    KindInfo("Gateway", "gateways", ("gtw",), GATEWAY_API_VERSIONS, True, read_gateway),
    KindInfo("HTTPRoute", "httproutes", (), GATEWAY_API_VERSIONS, True, read_http_route),
    KindInfo("GRPCRoute", "grpcroutes", (), GRPC_ROUTE_API_VERSIONS, True, read_grpc_route),
    KindInfo(
        "DestinationRule", "destinationrules", ("dr",), DESTINATION_RULE_API_VERSIONS, True,
        read_destination_rule,
    ),
    # Gateway API's experimental channel serves it as XBackendTrafficPolicy (GEP-3388);
    # ambit's CLI knows it by either name.
    KindInfo(
        "BackendTrafficPolicy", "xbackendtrafficpolicies",
        ("backendtrafficpolicies", "btp", "xbtrafficpolicy"),
        BACKEND_TRAFFIC_POLICY_API_VERSIONS, True, read_backend_traffic_policy,
        api_kind="XBackendTrafficPolicy",
    ),
    KindInfo(
        "FaultInjection", "faultinjections", ("fi",), FILTER_API_VERSIONS, True,
        read_fault_injection,
    ),
    KindInfo(
        "LocalRateLimit", "localratelimits", ("lrl",), FILTER_API_VERSIONS, True,
        read_local_rate_limit,
    ),
)  # fmt: skip
_BY_KIND = {name: k for k in KINDS for name in dict.fromkeys((k.kind, k.served_kind))}
_BY_NAME = {
    name: info
    for info in reversed(KINDS)  # the first kind declared wins a name two would share
    for name in (
        info.kind.lower(),
        info.served_kind.lower(),
        info.plural,
        *info.short_names,
        info.resource,
    )
}


def kind_info(name: str) -> KindInfo | None:
    """The kind called ``name``: its kind, plural, singular or short name, any case, with
    or without its API group (``pod``, ``po``, ``authorizationpolicies.security.istio.io``)."""
    return _BY_KIND.get(name) or _BY_NAME.get(name.lower())


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
        ignored = ignored_kind(kind, api_version)
        if ignored is not None:
            raise IgnoredKind(f"{where} ({kind} {namespace}/{name}): {ignored}")
        supported = ", ".join(k.kind for k in KINDS)
        what = f"{kind!r} is not supported" if kind is not None else "missing"
        Reader(where).fail("kind", f"{what}; supported kinds: {supported}")
    label = f"{kind} {name}" if not info.namespaced else f"{kind} {namespace}/{name}"
    r = Reader(f"{where} ({label if isinstance(name, str) else kind})")
    if api_version not in info.api_versions:
        r.fail(
            "apiVersion",
            f"{api_version!r} is not supported for {kind}; use {' or '.join(info.api_versions)}",
        )
    return info.read(r, doc)


MAX_FILE_BYTES = 32 << 20


@dataclass(frozen=True)
class Document:
    """One document of a manifest file: the object it holds, or why it cannot be used.
    ``raw`` is the document as read (what ``ambit get -o yaml`` shows of the spec)."""

    where: str  # "demo.yaml: document 3"
    raw: Mapping[str, object] | None
    obj: K8sObject | None
    error: str | None = None
    ignored: str | None = None  # an Istio kind ambit does not implement: what to say of it


class IgnoredKind(ManifestError):
    """An object of one of Istio's kinds that ambit does not implement (not an error:
    :attr:`Document.ignored`)."""


def _yaml_documents(text: str, filename: str) -> list[object]:
    try:
        return list(yaml.safe_load_all(text))
    except RecursionError:
        raise ManifestError(f"{filename}: nested too deeply to be a manifest") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{filename}: {at}not valid YAML: {problem}") from None


def read_documents(text: str, filename: str) -> list[Document]:
    """Every non-empty document of a YAML text, each read on its own: one bad object
    never hides the others. Raises :class:`ManifestError` only when the text as a whole
    is not YAML."""
    out = []
    for i, doc in enumerate(_yaml_documents(text, filename), start=1):
        if doc is None:
            continue
        where = f"{filename}: document {i}"
        raw = doc if isinstance(doc, dict) else None
        try:
            out.append(Document(where, raw, parse_object(doc, where)))
        except IgnoredKind as exc:
            out.append(Document(where, raw, None, ignored=str(exc)))
        except ManifestError as exc:
            out.append(Document(where, raw, None, str(exc)))
    return out


def read_files(*paths: str | os.PathLike[str]) -> list[Document]:
    """Every document of the given files, in order, each with its object or its error.
    A file that cannot be read, or is not YAML, is one :class:`Document` with the error;
    the same object defined twice is an error on the second."""
    out: list[Document] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in paths:
        filename = os.fspath(path)
        try:
            if os.path.getsize(filename) > MAX_FILE_BYTES:
                raise ManifestError(f"{filename}: larger than {MAX_FILE_BYTES >> 20} MiB")
            with open(filename, encoding="utf-8") as f:
                text = f.read()
            documents = read_documents(text, filename)
        except OSError as exc:
            out.append(Document(filename, None, None, f"{filename}: cannot read: {exc.strerror}"))
            continue
        except UnicodeDecodeError:
            out.append(Document(filename, None, None, f"{filename}: cannot read: not UTF-8 text"))
            continue
        except ManifestError as exc:
            out.append(Document(filename, None, None, str(exc)))
            continue
        for d in documents:
            if d.obj is not None:
                obj = d.obj
                kind = type(obj).__name__
                key = (kind, obj.namespace, obj.name)
                if key in seen:
                    name = f"{obj.namespace}/{obj.name}" if _BY_KIND[kind].namespaced else obj.name
                    error = f"{d.where} ({kind} {name}): defined twice, first in {seen[key]}"
                    d = Document(d.where, d.raw, None, error)
                else:
                    seen[key] = d.where
            out.append(d)
    return out


def loads(text: str, filename: str = "<string>") -> tuple[K8sObject, ...]:
    """Every object of a (multi-document) YAML text; the first bad one raises.
    Empty documents are skipped."""
    return _all_or_error(read_documents(text, filename))


def load(*paths: str | os.PathLike[str]) -> tuple[K8sObject, ...]:
    """Every object of the given YAML files, in order; the first bad one raises.
    The same object twice is an error."""
    return _all_or_error(read_files(*paths))


def _all_or_error(documents: list[Document]) -> tuple[K8sObject, ...]:
    for d in documents:
        if d.error is not None:
            raise ManifestError(d.error)
    return tuple(d.obj for d in documents if d.obj is not None)
