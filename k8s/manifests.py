"""Kubernetes manifests (YAML files, or dicts from the API) -> small typed objects.

Owns the edge where raw dicts become typed: Namespace, ServiceAccount, Pod, Service,
AuthorizationPolicy and PeerAuthentication (``security.ambit.io/v1``, also Istio's
``security.istio.io/v1`` and ``v1beta1``). Only the fields later parts use are kept.
Every problem is a :class:`ManifestError` naming the file, the document and the field
path, e.g. ``demo.yaml: document 3 (Service default/web): spec.ports[0].port: must be
an integer 1-65535``. Nothing past this module sees a raw dict.

Policy specs are read strictly (an unknown field is an error, since ignoring a typo'd
``principal:`` would silently change who gets in); other kinds keep what they need and
ignore the rest, as real manifests carry much more.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeAlias

import yaml

Pairs: TypeAlias = tuple[tuple[str, str], ...]
POLICY_API_VERSIONS = ("security.ambit.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1")
CORE_KINDS = ("Namespace", "ServiceAccount", "Pod", "Service")
POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")  # a DNS-1123 subdomain


class ManifestError(ValueError):
    """A manifest is malformed or asks for something ambit does not support."""


@dataclass(frozen=True, kw_only=True)
class _Meta:
    name: str
    namespace: str = "default"
    labels: Pairs = ()
    annotations: Pairs = ()


@dataclass(frozen=True, kw_only=True)
class Namespace(_Meta):
    namespace: str = ""


@dataclass(frozen=True, kw_only=True)
class ServiceAccount(_Meta):
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
class Pod(_Meta):
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
class Service(_Meta):
    selector: Pairs | None = None
    ports: tuple[ServicePortSpec, ...] = ()
    cluster_ip: str | None = None  # None: not allocated yet, or headless

    def with_cluster_ip(self, ip: str) -> Service:
        return dataclasses.replace(self, cluster_ip=ip)


@dataclass(frozen=True, kw_only=True)
class PolicySource:
    """Istio's ``from[].source``; ports of the spec's strings are already integers here."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PolicyOperation:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PolicyCondition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PolicyRule:
    sources: tuple[PolicySource, ...] = ()
    operations: tuple[PolicyOperation, ...] = ()
    when: tuple[PolicyCondition, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AuthorizationPolicy(_Meta):
    action: Literal["ALLOW", "DENY"] = "ALLOW"
    selector: Pairs | None = None  # None: every workload of the namespace
    rules: tuple[PolicyRule, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PeerAuthentication(_Meta):
    selector: Pairs | None = None
    mode: Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"] = "UNSET"


K8sObject: TypeAlias = (
    Namespace | ServiceAccount | Pod | Service | AuthorizationPolicy | PeerAuthentication
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class _Reader:
    """Typed reads of one document's fields; every failure names the document and the path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> NoReturn:
        raise ManifestError(f"{self.where}: {path}: {message}")

    def mapping(
        self, value: object, path: str, allowed: Iterable[str] | None = None
    ) -> dict[str, object]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, not {_kind_of(value)}")
        if allowed is not None:
            known = tuple(allowed)
            for key in value:
                if key not in known:
                    self.fail(f"{path}.{key}", f"unknown field; known fields: {', '.join(known)}")
        return {str(k): v for k, v in value.items()}

    def sequence(self, value: object, path: str) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {_kind_of(value)}")
        return value

    def name(self, value: object, path: str, default: str | None = None) -> str:
        text = self.string(value, path, default)
        if len(text) > 253 or not _NAME_RE.match(text):
            self.fail(
                path,
                f"{text!r} is not a Kubernetes name: lowercase letters, digits, '-' and '.',"
                " starting and ending with a letter or digit",
            )
        return text

    def string(self, value: object, path: str, default: str | None = None) -> str:
        if value is None and default is not None:
            return default
        if value is None:
            self.fail(path, "required")
        if isinstance(value, bool | int | float):
            self.fail(path, f"must be a string, not {_kind_of(value)} {value!r} (quote it)")
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {_kind_of(value)}")
        return value

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        return tuple(
            self.string(v, f"{path}[{i}]") for i, v in enumerate(self.sequence(value, path))
        )

    def port(self, value: object, path: str, *, text_ok: bool = False) -> int:
        if text_ok and isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            self.fail(path, f"must be an integer 1-65535, not {value!r}")
        return value

    def ip(self, value: object, path: str) -> str:
        text = self.string(value, path)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            self.fail(path, f"{text!r} is not an IP address")
        return text

    def labels(self, value: object, path: str) -> Pairs:
        items = self.mapping(value, path)
        return tuple(sorted((k, self.string(v, f"{path}.{k}")) for k, v in items.items()))

    def selector(self, value: object, path: str) -> Pairs | None:
        match_labels = self.mapping(value, path, ("matchLabels",)).get("matchLabels")
        return self.labels(match_labels, f"{path}.matchLabels") or None


def _kind_of(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _read_meta(r: _Reader, doc: Mapping[str, object], *, namespaced: bool = True) -> dict[str, Any]:
    """``name``, ``namespace`` (default "default"), ``labels`` and ``annotations``."""
    meta = r.mapping(doc.get("metadata"), "metadata")
    out: dict[str, Any] = {
        "name": r.name(meta.get("name"), "metadata.name"),
        "labels": r.labels(meta.get("labels"), "metadata.labels"),
        "annotations": r.labels(meta.get("annotations"), "metadata.annotations"),
    }
    if namespaced:
        out["namespace"] = r.name(meta.get("namespace"), "metadata.namespace", "default")
    return out


def _read_pod(r: _Reader, doc: Mapping[str, object]) -> Pod:
    meta = _read_meta(r, doc)
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


def _read_service(r: _Reader, doc: Mapping[str, object]) -> Service:
    meta = _read_meta(r, doc)
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


def _read_fields(r: _Reader, value: object, path: str, cls: type) -> dict[str, tuple[object, ...]]:
    """Read a strict mapping whose camelCase keys are the fields of ``cls``: lists of strings,
    or of ports (Istio writes ports as strings; plain integers are accepted too)."""
    fields = {_camel(f.name): f for f in dataclasses.fields(cls)}
    raw = r.mapping(value, path, fields)
    if not raw:
        r.fail(path, f"must set at least one of {', '.join(fields)}")
    out: dict[str, tuple[object, ...]] = {}
    for key, v in raw.items():
        if fields[key].type == "tuple[int, ...]":
            items = r.sequence(v, f"{path}.{key}")
            out[fields[key].name] = tuple(
                r.port(p, f"{path}.{key}[{j}]", text_ok=True) for j, p in enumerate(items)
            )
        else:
            out[fields[key].name] = r.strings(v, f"{path}.{key}")
    return out


def _check_pattern(r: _Reader, value: str, path: str, what: str) -> None:
    if not value or "*" in value.strip("*") or (value.count("*") > 1 and value != "*"):
        what = what.replace("_", " ")
        r.fail(path, f"{value!r}: a {what} is exact, '*', or has one '*' at its start or end")
    if what == "principal" and value.startswith("spiffe://"):
        r.fail(
            path, f"{value!r}: write principals without 'spiffe://', e.g. cluster.local/ns/NS/sa/SA"
        )


def _read_rule(r: _Reader, value: object, path: str) -> PolicyRule:
    rule = r.mapping(value, path, ("from", "to", "when"))
    sources = []
    for i, item in enumerate(r.sequence(rule.get("from"), f"{path}.from")):
        at = f"{path}.from[{i}].source"
        raw = r.mapping(item, f"{path}.from[{i}]", ("source",)).get("source")
        fields = _read_fields(r, raw, at, PolicySource)
        for name, values in fields.items():
            for j, v in enumerate(values):
                at_v = f"{at}.{_camel(name)}[{j}]"
                if name in ("principals", "not_principals"):
                    _check_pattern(r, str(v), at_v, "principal")
                elif name.endswith(("namespaces", "request_principals")):
                    _check_pattern(r, str(v), at_v, name.removeprefix("not_")[:-1])
                elif "ip_blocks" in name:
                    try:
                        ipaddress.ip_network(str(v), strict=False)
                    except ValueError:
                        r.fail(at_v, f"{v!r} is not an IP address or CIDR")
        sources.append(PolicySource(**fields))  # type: ignore[arg-type]
    operations = []
    for i, item in enumerate(r.sequence(rule.get("to"), f"{path}.to")):
        raw = r.mapping(item, f"{path}.to[{i}]", ("operation",)).get("operation")
        fields = _read_fields(r, raw, f"{path}.to[{i}].operation", PolicyOperation)
        operations.append(PolicyOperation(**fields))  # type: ignore[arg-type]
    when = []
    for i, item in enumerate(r.sequence(rule.get("when"), f"{path}.when")):
        c = r.mapping(item, f"{path}.when[{i}]", ("key", "values", "notValues"))
        when.append(
            PolicyCondition(
                key=r.string(c.get("key"), f"{path}.when[{i}].key"),
                values=r.strings(c.get("values"), f"{path}.when[{i}].values"),
                not_values=r.strings(c.get("notValues"), f"{path}.when[{i}].notValues"),
            )
        )
    return PolicyRule(sources=tuple(sources), operations=tuple(operations), when=tuple(when))


def _read_authorization(r: _Reader, doc: Mapping[str, object]) -> AuthorizationPolicy:
    meta = _read_meta(r, doc)
    known = ("selector", "action", "rules", "provider", "targetRef", "targetRefs")
    spec = r.mapping(doc.get("spec"), "spec", known)
    for key in ("targetRef", "targetRefs"):
        if key in spec:
            r.fail(f"spec.{key}", "not supported: ambit applies policies to workloads, by selector")
    action = r.string(spec.get("action"), "spec.action", "ALLOW")
    if action not in ("ALLOW", "DENY"):
        hint = " (AUDIT and CUSTOM are not supported)" if action in ("AUDIT", "CUSTOM") else ""
        r.fail("spec.action", f"{action!r}: must be ALLOW or DENY{hint}")
    if "provider" in spec:
        r.fail("spec.provider", "only used with action CUSTOM, which ambit does not support")
    rules = r.sequence(spec.get("rules"), "spec.rules")
    return AuthorizationPolicy(
        **meta,
        action=action,  # type: ignore[arg-type]
        selector=r.selector(spec.get("selector"), "spec.selector"),
        rules=tuple(_read_rule(r, rule, f"spec.rules[{i}]") for i, rule in enumerate(rules)),
    )


def _read_peer_authentication(r: _Reader, doc: Mapping[str, object]) -> PeerAuthentication:
    meta = _read_meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec", ("selector", "mtls", "portLevelMtls"))
    if "portLevelMtls" in spec:
        r.fail("spec.portLevelMtls", "not supported yet: set one mode for the whole workload")
    mode = r.string(
        r.mapping(spec.get("mtls"), "spec.mtls", ("mode",)).get("mode"), "spec.mtls.mode", "UNSET"
    )
    if mode not in ("STRICT", "PERMISSIVE", "DISABLE", "UNSET"):
        r.fail("spec.mtls.mode", f"{mode!r}: must be STRICT, PERMISSIVE, DISABLE or UNSET")
    return PeerAuthentication(
        **meta,
        selector=r.selector(spec.get("selector"), "spec.selector"),
        mode=mode,  # type: ignore[arg-type]
    )


def parse_object(doc: object, where: str = "<object>") -> K8sObject:
    """One Kubernetes object (a dict as YAML or the API gives it) -> its typed form.

    ``where`` starts every error message (a file and document, or an API watch).
    """
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{where}: must be a mapping with apiVersion and kind, not {_kind_of(doc)}"
        )
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    namespace = (meta.get("namespace") if isinstance(meta, dict) else None) or "default"
    label = f"{kind} {name}" if kind == "Namespace" else f"{kind} {namespace}/{name}"
    r = _Reader(f"{where} ({label if isinstance(name, str) else kind})")
    if kind in CORE_KINDS:
        wanted: tuple[str, ...] = ("v1",)
    elif kind in POLICY_KINDS:
        wanted = POLICY_API_VERSIONS
    else:
        r = _Reader(where)
        supported = ", ".join(CORE_KINDS + POLICY_KINDS)
        what = f"kind {kind!r}" if kind is not None else "kind"
        r.fail("kind", f"{what} is not supported; supported kinds: {supported}")
    if api_version not in wanted:
        r.fail(
            "apiVersion", f"{api_version!r} is not supported for {kind}; use {' or '.join(wanted)}"
        )
    if kind == "Namespace":
        return Namespace(**_read_meta(r, doc, namespaced=False))
    if kind == "ServiceAccount":
        return ServiceAccount(**_read_meta(r, doc))
    if kind == "Pod":
        return _read_pod(r, doc)
    if kind == "Service":
        return _read_service(r, doc)
    if kind == "AuthorizationPolicy":
        return _read_authorization(r, doc)
    return _read_peer_authentication(r, doc)


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
