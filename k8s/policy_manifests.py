"""Istio's security kinds as typed objects: AuthorizationPolicy, PeerAuthentication and
RequestAuthentication (``security.ambit.io/v1``, also Istio's ``security.istio.io/v1``
and ``v1beta1``).

Their specs are read strictly: an unknown field is an error, since ignoring a typo'd
``principal:`` (or ``jwksURI:``) would silently change who gets in. A
RequestAuthentication's JWT rules are built straight as :class:`mesh.model_l7.JwtRule`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from k8s.manifest_reader import Meta, Pairs, Reader, camel, read_meta
from mesh.constants import SYSTEM_NAMESPACE
from mesh.model import TARGET_KINDS
from mesh.model_l7 import ClaimToHeader, JwtHeader, JwtRule

_MAX_TARGET_REFS = 16  # as Istio's schema
_MAX_JWT_RULES = 4096
_CLAIM_HEADER_RE = re.compile(r"^[-_A-Za-z0-9]+$")
_TIMEOUT_RE = re.compile(r"^(([0-9]+(\.[0-9]+)?)(h|m|s|ms|us|µs|ns))+$")
_TIMEOUT_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s|us|µs|ns)")
_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


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
class PolicyTargetRef:
    """One of ``targetRefs``: what the policy binds, in its own namespace. ``group`` "" is the
    core group (Istio's ``core`` is read as "")."""

    group: str = ""
    kind: str
    name: str


@dataclass(frozen=True, kw_only=True)
class AuthorizationPolicy(Meta):
    """``target_refs`` (``targetRefs``, or the older single ``targetRef``) and ``selector``
    exclude each other. ``provider`` is the name of CUSTOM's external authorizer."""

    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    selector: Pairs | None = None  # None: every workload of the namespace
    rules: tuple[PolicyRule, ...] = ()
    target_refs: tuple[PolicyTargetRef, ...] = ()
    provider: str = ""


@dataclass(frozen=True, kw_only=True)
class RequestAuthentication(Meta):
    """``selector`` (workloads) and ``target_refs`` (waypoints) exclude each other."""

    selector: Pairs | None = None
    target_refs: tuple[PolicyTargetRef, ...] = ()
    jwt_rules: tuple[JwtRule, ...] = ()


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


def _read_target_refs(
    r: Reader, spec: Mapping[str, object], namespace: str
) -> tuple[PolicyTargetRef, ...]:
    """``targetRefs`` (or the single ``targetRef``), as Istio's webhook checks them: kind and
    name required, group one that goes with the kind, no namespace, no selector beside."""
    if "targetRef" in spec and "targetRefs" in spec:
        r.fail("spec.targetRef", "set targetRefs or the older targetRef, not both")
    key = "targetRef" if "targetRef" in spec else "targetRefs"
    if key == "targetRef":
        items = [(spec["targetRef"], "spec.targetRef")]
    else:
        refs = r.sequence(spec.get("targetRefs"), "spec.targetRefs")
        if len(refs) > _MAX_TARGET_REFS:
            r.fail("spec.targetRefs", f"at most {_MAX_TARGET_REFS} entries, not {len(refs)}")
        items = [(ref, f"spec.targetRefs[{i}]") for i, ref in enumerate(refs)]
    if items and spec.get("selector") is not None:
        r.fail(
            f"spec.{key}",
            f"set selector or {key}, not both: a selector picks workloads for ztunnel,"
            f" {key} binds the policy to waypoints",
        )
    out = []
    for value, path in items:
        ref = r.mapping(value, path, ("group", "kind", "name", "namespace"))
        group = r.string(ref.get("group"), f"{path}.group", "")
        group = "" if group == "core" else group
        kind = r.string(ref.get("kind"), f"{path}.kind")
        name = r.name(ref.get("name"), f"{path}.name")
        if r.string(ref.get("namespace"), f"{path}.namespace", ""):
            r.fail(
                f"{path}.namespace", "must be left out: a policy binds only in its own namespace"
            )
        groups = [g for g, k in TARGET_KINDS if k == kind]
        if not groups:
            kinds = ", ".join(k for _, k in TARGET_KINDS)
            r.fail(f"{path}.kind", f"{kind!r} cannot be a target; use one of {kinds}")
        if group not in groups:
            also = " (or 'core')" if groups[0] == "" else ""
            r.fail(f"{path}.group", f"a {kind}'s group is {groups[0]!r}{also}, not {group!r}")
        if kind == "GatewayClass" and namespace != SYSTEM_NAMESPACE:
            r.fail(path, f"a GatewayClass is a target only for policies in {SYSTEM_NAMESPACE}")
        out.append(PolicyTargetRef(group=group, kind=kind, name=name))
    return tuple(out)


def read_authorization(r: Reader, doc: Mapping[str, object]) -> AuthorizationPolicy:
    meta = read_meta(r, doc)
    known = ("selector", "action", "rules", "provider", "targetRef", "targetRefs")
    spec = r.mapping(doc.get("spec"), "spec", known)
    action = r.string(spec.get("action"), "spec.action", "ALLOW")
    if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        r.fail("spec.action", f"{action!r}: must be ALLOW, DENY, AUDIT or CUSTOM")
    provider = ""
    if "provider" in spec:
        if action != "CUSTOM":
            r.fail("spec.provider", f"only used with action CUSTOM, not {action}")
        raw = r.mapping(spec["provider"], "spec.provider", ("name",)).get("name")
        provider = r.string(raw, "spec.provider.name")
    rules = r.sequence(spec.get("rules"), "spec.rules")
    if action == "CUSTOM":
        if not rules:
            r.fail("spec.rules", "a CUSTOM policy without rules never applies; add `- {}` for all")
        if not provider:
            r.fail("spec.provider.name", "action CUSTOM needs the name of an external authorizer")
    return AuthorizationPolicy(
        **meta,
        action=action,  # type: ignore[arg-type]
        selector=r.selector(spec.get("selector"), "spec.selector"),
        rules=tuple(_read_rule(r, rule, f"spec.rules[{i}]") for i, rule in enumerate(rules)),
        target_refs=_read_target_refs(r, spec, meta["namespace"]),
        provider=provider,
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


def _timeout_ms(r: Reader, value: object, path: str) -> int:
    """A duration as Istio writes it (``5s``, ``1.5s``, ``500ms``), at least 1 ms."""
    text = r.string(value, path)
    if not _TIMEOUT_RE.match(text):
        r.fail(path, f"{text!r} is not a duration such as 5s, 1.5s or 500ms")
    seconds = sum(float(n) * _SECONDS[unit] for n, unit in _TIMEOUT_PART_RE.findall(text))
    if seconds < 1e-3:
        r.fail(path, f"{text!r} is shorter than 1ms")
    return round(seconds * 1000)


def _jwks_uri(r: Reader, value: object, path: str) -> str:
    text = r.string(value, path, "", limit=2048)
    if text:
        try:
            parts = urllib.parse.urlsplit(text)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # "https://[::1": an unclosed bracket
            ok = False
        if not ok:
            r.fail(path, f"{text!r} is not an http:// or https:// URL")
    return text


def _read_jwt_rule(r: Reader, value: object, path: str) -> JwtRule:
    known = (
        "issuer",
        "audiences",
        "jwksUri",
        "jwks",
        "fromHeaders",
        "fromParams",
        "fromCookies",
        "outputPayloadToHeader",
        "outputClaimToHeaders",
        "forwardOriginalToken",
        "timeout",
    )
    rule = r.mapping(value, path, known)
    issuer = r.string(rule.get("issuer"), f"{path}.issuer", limit=1024)
    if not issuer:
        r.fail(f"{path}.issuer", "must not be empty")
    headers = []
    for i, item in enumerate(r.sequence(rule.get("fromHeaders"), f"{path}.fromHeaders")):
        at = f"{path}.fromHeaders[{i}]"
        h = r.mapping(item, at, ("name", "prefix"))
        name = r.string(h.get("name"), f"{at}.name")
        if not name:
            r.fail(f"{at}.name", "must not be empty")
        headers.append(JwtHeader(name, r.string(h.get("prefix"), f"{at}.prefix", "")))
    claims = []
    for i, item in enumerate(
        r.sequence(rule.get("outputClaimToHeaders"), f"{path}.outputClaimToHeaders")
    ):
        at = f"{path}.outputClaimToHeaders[{i}]"
        c = r.mapping(item, at, ("header", "claim"))
        header = r.string(c.get("header"), f"{at}.header")
        if not _CLAIM_HEADER_RE.match(header):
            r.fail(f"{at}.header", f"{header!r} is not a header name (letters, digits, '-', '_')")
        claim = r.string(c.get("claim"), f"{at}.claim")
        if not claim:
            r.fail(f"{at}.claim", "must not be empty")
        claims.append(ClaimToHeader(header, claim))
    strings = {}
    for key in ("audiences", "fromParams", "fromCookies"):
        strings[key] = r.strings(rule.get(key), f"{path}.{key}")
        for j, text in enumerate(strings[key]):
            if not text:
                r.fail(f"{path}.{key}[{j}]", "must not be empty")
    forward = rule.get("forwardOriginalToken", False)
    if not isinstance(forward, bool):
        r.fail(f"{path}.forwardOriginalToken", f"must be true or false, not {forward!r}")
    timeout = rule.get("timeout")
    return JwtRule(
        issuer=issuer,
        audiences=strings["audiences"],
        jwks_uri=_jwks_uri(r, rule.get("jwksUri"), f"{path}.jwksUri"),
        jwks=r.string(rule.get("jwks"), f"{path}.jwks", ""),
        from_headers=tuple(headers),
        from_params=strings["fromParams"],
        from_cookies=strings["fromCookies"],
        output_payload_to_header=r.string(
            rule.get("outputPayloadToHeader"), f"{path}.outputPayloadToHeader", ""
        ),
        output_claim_to_headers=tuple(claims),
        forward_original_token=forward,
        timeout_ms=_timeout_ms(r, timeout, f"{path}.timeout") if timeout is not None else None,
    )


def read_request_authentication(r: Reader, doc: Mapping[str, object]) -> RequestAuthentication:
    meta = read_meta(r, doc)
    known = ("selector", "targetRef", "targetRefs", "jwtRules")
    spec = r.mapping(doc.get("spec"), "spec", known)
    items = r.items(spec.get("jwtRules"), "spec.jwtRules", _MAX_JWT_RULES)
    return RequestAuthentication(
        **meta,
        selector=r.selector(spec.get("selector"), "spec.selector"),
        target_refs=_read_target_refs(r, spec, meta["namespace"]),
        jwt_rules=tuple(_read_jwt_rule(r, item, at) for item, at in items),
    )
