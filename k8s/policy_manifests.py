"""Istio's security kinds as typed objects: AuthorizationPolicy and PeerAuthentication
(``security.ambit.io/v1``, also Istio's ``security.istio.io/v1`` and ``v1beta1``).

Their specs are read strictly: an unknown field is an error, since ignoring a typo'd
``principal:`` would silently change who gets in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from k8s.manifest_reader import Meta, Pairs, Reader, camel, read_meta


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
class AuthorizationPolicy(Meta):
    action: Literal["ALLOW", "DENY"] = "ALLOW"
    selector: Pairs | None = None  # None: every workload of the namespace
    rules: tuple[PolicyRule, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PeerAuthentication(Meta):
    selector: Pairs | None = None
    mode: Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"] = "UNSET"


def _read_fields(r: Reader, value: object, path: str, cls: type) -> dict[str, tuple[object, ...]]:
    """Read a strict mapping whose camelCase keys are the fields of ``cls``: lists of strings,
    or of ports (Istio writes ports as strings; plain integers are accepted too)."""
    fields = {camel(f.name): f for f in dataclasses.fields(cls)}
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


def _check_pattern(r: Reader, value: str, path: str, what: str) -> None:
    if not value or "*" in value.strip("*") or (value.count("*") > 1 and value != "*"):
        what = what.replace("_", " ")
        r.fail(path, f"{value!r}: a {what} is exact, '*', or has one '*' at its start or end")
    if what == "principal" and value.startswith("spiffe://"):
        r.fail(
            path, f"{value!r}: write principals without 'spiffe://', e.g. cluster.local/ns/NS/sa/SA"
        )


def _read_rule(r: Reader, value: object, path: str) -> PolicyRule:
    rule = r.mapping(value, path, ("from", "to", "when"))
    sources = []
    for i, item in enumerate(r.sequence(rule.get("from"), f"{path}.from")):
        at = f"{path}.from[{i}].source"
        raw = r.mapping(item, f"{path}.from[{i}]", ("source",)).get("source")
        fields = _read_fields(r, raw, at, PolicySource)
        for name, values in fields.items():
            for j, v in enumerate(values):
                at_v = f"{at}.{camel(name)}[{j}]"
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
        at = f"{path}.when[{i}]"
        c = r.mapping(item, at, ("key", "values", "notValues"))
        condition = PolicyCondition(
            key=r.string(c.get("key"), f"{at}.key"),
            values=r.strings(c.get("values"), f"{at}.values"),
            not_values=r.strings(c.get("notValues"), f"{at}.notValues"),
        )
        if not condition.key:
            r.fail(f"{at}.key", "must not be empty")
        if not (condition.values or condition.not_values):
            r.fail(at, f"set values, notValues or both for key {condition.key!r}")
        when.append(condition)
    return PolicyRule(sources=tuple(sources), operations=tuple(operations), when=tuple(when))


def read_authorization(r: Reader, doc: Mapping[str, object]) -> AuthorizationPolicy:
    meta = read_meta(r, doc)
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


def read_peer_authentication(r: Reader, doc: Mapping[str, object]) -> PeerAuthentication:
    meta = read_meta(r, doc)
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
