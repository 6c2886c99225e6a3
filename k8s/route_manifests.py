"""HTTPRoute and GRPCRoute as typed objects, read as :mod:`k8s.gateway_manifests` reads
the other Gateway API kinds (the CRDs' schema and CEL rules, API server defaults,
strict specs).

A route's parents (``parentRefs``: Gateways by default, or Services, group "") and its
rules (matches, filters, backends, timeouts) become :mod:`mesh.model_l7` values as read:
an HTTPRoute without rules has the API server's one rule matching every path, a match
without a path ``PathPrefix /``, a backend weight 1. Backends and filters are read by
:mod:`k8s.route_filter_manifests`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from k8s import gateway_manifests as g
from k8s import route_filter_manifests as rf
from k8s.manifest_reader import Meta, Reader, read_meta
from k8s.route_filter_manifests import GRPC_FILTERS, HTTP_FILTERS, HTTP_METHODS, MAX_ITEMS
from k8s.traffic_manifests import grpc_code
from mesh.model import GATEWAY_GROUP
from mesh.model_l7 import (
    MAX_WEIGHT,
    BackendRef,
    GrpcMatch,
    GrpcRetry,
    GrpcRule,
    HeaderMatch,
    HttpMatch,
    HttpRule,
    ParentRef,
    Retry,
)

_MAX_PARENT_REFS = 32
_MAX_HOSTNAMES = 16
_MAX_RULES = 16
_MAX_HTTP_MATCHES = 64  # per rule (8 before Gateway API 1.3)
_MAX_GRPC_MATCHES = 8
_MAX_MATCHES = 128  # in all the rules of a route
_GRPC_SERVICE_RE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
_GRPC_METHOD_RE = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


@dataclass(frozen=True, kw_only=True)
class HTTPRoute(Meta):
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HttpRule, ...] = (HttpRule(),)


@dataclass(frozen=True, kw_only=True)
class GRPCRoute(Meta):
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GrpcRule, ...] = ()


# --- Parents and backends ------------------------------------------------------------------


def _parent_refs(r: Reader, spec: Mapping[str, object]) -> tuple[ParentRef, ...]:
    refs: list[ParentRef] = []
    for item, at in r.items(spec.get("parentRefs"), "spec.parentRefs", _MAX_PARENT_REFS):
        known = ("group", "kind", "namespace", "name", "sectionName", "port")
        p = r.mapping(item, at, known)
        section = p.get("sectionName")
        refs.append(
            ParentRef(
                group=g.group(r, p.get("group"), f"{at}.group", GATEWAY_GROUP),
                kind=g.kind(r, p.get("kind"), f"{at}.kind", "Gateway"),
                name=g.object_name(r, p.get("name"), f"{at}.name"),
                namespace=g.optional_namespace(r, p.get("namespace"), f"{at}.namespace"),
                section_name=r.name(section, f"{at}.sectionName") if section else "",
                port=r.port(p["port"], f"{at}.port") if p.get("port") is not None else 0,
            )
        )
    # References to one parent must each name their own section (or port).
    for i, ref in enumerate(refs):
        for j, other in enumerate(refs[:i]):
            if ref.parent != other.parent:
                continue
            at = f"spec.parentRefs[{i}]"
            if (ref.section_name, ref.port) == (other.section_name, other.port):
                r.fail(at, f"refers to the same parent and section as spec.parentRefs[{j}]")
            if (bool(ref.section_name), bool(ref.port)) != (
                bool(other.section_name),
                bool(other.port),
            ):
                r.fail(
                    at,
                    f"refers to the parent of spec.parentRefs[{j}]: set sectionName (or"
                    " port) on every reference to one parent, or on none",
                )
    return tuple(refs)


def _hostnames(r: Reader, spec: Mapping[str, object]) -> tuple[str, ...]:
    items = r.items(spec.get("hostnames"), "spec.hostnames", _MAX_HOSTNAMES)
    return tuple(g.hostname(r, item, at) for item, at in items)


def _backends(
    r: Reader,
    rule: Mapping[str, object],
    path: str,
    filter_types: tuple[str, ...],
) -> tuple[BackendRef, ...]:
    out = []
    for item, at in r.items(rule.get("backendRefs"), f"{path}.backendRefs", MAX_ITEMS):
        known = ("group", "kind", "name", "namespace", "port", "weight", "filters")
        b = r.mapping(item, at, known)
        weight = r.integer(b.get("weight", 1), f"{at}.weight", 0, MAX_WEIGHT)
        filters = rf.filters(r, b.get("filters"), f"{at}.filters", filter_types)
        out.append(rf.backend_ref(r, b, at, weight=weight, filters=filters))
    return tuple(out)


# --- Matches -------------------------------------------------------------------------------


def _header_matches(
    r: Reader,
    value: object,
    path: str,
    value_limit: int,
) -> tuple[HeaderMatch, ...]:
    out = []
    for item, at in r.items(value, path, MAX_ITEMS):
        h = r.mapping(item, at, ("type", "name", "value"))
        match_type = r.string(h.get("type"), f"{at}.type", "Exact")
        if match_type not in ("Exact", "RegularExpression"):
            r.fail(f"{at}.type", f"{match_type!r}: must be Exact or RegularExpression")
        text = r.string(h.get("value"), f"{at}.value", limit=value_limit)
        if not text:
            r.fail(f"{at}.value", "must not be empty")
        name = g.header_name(r, h.get("name"), f"{at}.name")
        out.append(HeaderMatch(name, text, match_type))  # type: ignore[arg-type]
    g.unique(r, [m.name for m in out], path, "name")
    return tuple(out)


def _http_match(r: Reader, value: object, path: str) -> HttpMatch:
    m = r.mapping(value, path, ("path", "headers", "queryParams", "method"))
    p = r.mapping(m.get("path"), f"{path}.path", ("type", "value"))
    path_type = r.string(p.get("type"), f"{path}.path.type", "PathPrefix")
    if path_type not in ("Exact", "PathPrefix", "RegularExpression"):
        r.fail(
            f"{path}.path.type", f"{path_type!r}: must be Exact, PathPrefix or RegularExpression"
        )
    text = r.string(p.get("value"), f"{path}.path.value", "/", limit=1024)
    if path_type != "RegularExpression":
        g.url_path(r, text, f"{path}.path.value")
    method = r.string(m.get("method"), f"{path}.method", "")
    if method and method not in HTTP_METHODS:
        r.fail(f"{path}.method", f"{method!r}: must be one of {', '.join(HTTP_METHODS)}")
    return HttpMatch(
        path_type,  # type: ignore[arg-type]
        text,
        _header_matches(r, m.get("headers"), f"{path}.headers", 4096),
        _header_matches(r, m.get("queryParams"), f"{path}.queryParams", 1024),
        method,
    )


def _grpc_match(r: Reader, value: object, path: str) -> GrpcMatch:
    m = r.mapping(value, path, ("method", "headers"))
    at = f"{path}.method"
    method = r.mapping(m.get("method"), at, ("type", "service", "method"))
    match_type = r.string(method.get("type"), f"{at}.type", "Exact")
    if match_type not in ("Exact", "RegularExpression"):
        r.fail(f"{at}.type", f"{match_type!r}: must be Exact or RegularExpression")
    service = r.string(method.get("service"), f"{at}.service", "", limit=1024)
    name = r.string(method.get("method"), f"{at}.method", "", limit=1024)
    if "type" in method and not (service or name):
        r.fail(at, "set service, method or both")
    if match_type == "Exact" and service and not _GRPC_SERVICE_RE.match(service):
        r.fail(f"{at}.service", f"{service!r} is not a gRPC service name (package.Service)")
    if match_type == "Exact" and name and not _GRPC_METHOD_RE.match(name):
        r.fail(f"{at}.method", f"{name!r} is not a gRPC method name")
    headers = _header_matches(r, m.get("headers"), f"{path}.headers", 4096)
    return GrpcMatch(match_type, service, name, headers)  # type: ignore[arg-type]


# --- Filters -------------------------------------------------------------------------------


# --- Rules and routes ----------------------------------------------------------------------


def _timeouts(r: Reader, value: object, path: str) -> tuple[int | None, int | None]:
    t = r.mapping(value, path, ("request", "backendRequest"))
    request = g.duration_ms(r, t["request"], f"{path}.request") if "request" in t else None
    backend = None
    if "backendRequest" in t:
        backend = g.duration_ms(r, t["backendRequest"], f"{path}.backendRequest")
        if request and backend > request:
            r.fail(f"{path}.backendRequest", "must not be longer than the request timeout")
    return request, backend


_R = TypeVar("_R", Retry, GrpcRetry)
_MAX_RETRY_CODES = 32
_MAX_RETRY_ATTEMPTS = 10


def _retry(r: Reader, value: object, path: str) -> Retry | None:
    """GEP-1731's ``retry``: ``codes`` (400-599), ``attempts``, ``backoff`` (a duration)."""
    if value is None:
        return None
    spec = r.mapping(value, path, ("codes", "attempts", "backoff"))
    items = r.items(spec.get("codes"), f"{path}.codes", _MAX_RETRY_CODES)
    codes = tuple(sorted({r.integer(code, at, 400, 599) for code, at in items}))
    return _retry_limits(r, spec, path, Retry(codes))


def _retry_limits(r: Reader, spec: Mapping[str, object], path: str, retry: _R) -> _R:
    """``retry`` with the ``attempts`` and ``backoff`` of ``spec``, where given."""
    if "attempts" in spec:
        attempts = r.integer(spec["attempts"], f"{path}.attempts", 0, _MAX_RETRY_ATTEMPTS)
        retry = dataclasses.replace(retry, attempts=attempts)
    if "backoff" in spec:
        backoff = g.duration_ms(r, spec["backoff"], f"{path}.backoff")
        retry = dataclasses.replace(retry, backoff_ms=backoff)
    return retry


def _grpc_retry(r: Reader, value: object, path: str) -> GrpcRetry | None:
    """A GRPCRoute rule's ``retry``: GEP-1731's shape, ``codes`` gRPC status codes (0-16,
    or their names: ``UNAVAILABLE``)."""
    if value is None:
        return None
    spec = r.mapping(value, path, ("codes", "attempts", "backoff"))
    items = r.items(spec.get("codes"), f"{path}.codes", _MAX_RETRY_CODES)
    codes = tuple(sorted({grpc_code(r, code, at) for code, at in items}))
    return _retry_limits(r, spec, path, GrpcRetry(codes))


def _rule_name(r: Reader, rule: Mapping[str, object], path: str, seen: list[str]) -> str:
    if rule.get("name") in (None, ""):
        return ""
    name = r.name(rule["name"], f"{path}.name")
    if name in seen:
        r.fail(f"{path}.name", f"{name!r} is also the name of another rule")
    seen.append(name)
    return name


def _http_rule(r: Reader, value: object, path: str, names: list[str]) -> HttpRule:
    known = ("name", "matches", "filters", "backendRefs", "timeouts", "retry",
             *g.IGNORED["rule"])  # fmt: skip
    rule = r.mapping(value, path, known)
    items = r.items(rule.get("matches"), f"{path}.matches", _MAX_HTTP_MATCHES)
    matches = tuple(_http_match(r, item, at) for item, at in items) or (HttpMatch(),)
    filters = rf.filters(r, rule.get("filters"), f"{path}.filters", HTTP_FILTERS)
    backends = _backends(r, rule, path, HTTP_FILTERS)
    if backends and any(f.type == "RequestRedirect" for f in filters):
        r.fail(
            f"{path}.filters",
            "a RequestRedirect filter answers the request itself, so it"
            " cannot be used together with backendRefs",
        )
    prefixed = rf.replaces_prefix(filters) or any(rf.replaces_prefix(b.filters) for b in backends)
    if prefixed and (len(matches) != 1 or matches[0].path_type != "PathPrefix"):
        r.fail(f"{path}.matches", "a ReplacePrefixMatch needs exactly one PathPrefix match")
    timeout, backend_timeout = _timeouts(r, rule.get("timeouts"), f"{path}.timeouts")
    name = _rule_name(r, rule, path, names)
    retry = _retry(r, rule.get("retry"), f"{path}.retry")
    return HttpRule(matches, filters, backends, timeout, backend_timeout, name, retry)


def _grpc_rule(r: Reader, value: object, path: str, names: list[str]) -> GrpcRule:
    rule = r.mapping(
        value, path, ("name", "matches", "filters", "backendRefs", "sessionPersistence", "retry")
    )
    items = r.items(rule.get("matches"), f"{path}.matches", _MAX_GRPC_MATCHES)
    return GrpcRule(
        tuple(_grpc_match(r, item, at) for item, at in items),
        rf.filters(r, rule.get("filters"), f"{path}.filters", GRPC_FILTERS),
        _backends(r, rule, path, GRPC_FILTERS),
        _rule_name(r, rule, path, names),
        _grpc_retry(r, rule.get("retry"), f"{path}.retry"),
    )


def _spec(
    r: Reader, doc: Mapping[str, object]
) -> tuple[dict[str, object], list[tuple[object, str]]]:
    spec = r.mapping(doc.get("spec"), "spec", ("parentRefs", "hostnames", "rules"))
    return spec, r.items(spec.get("rules"), "spec.rules", _MAX_RULES)


def _check_total(r: Reader, counts: list[int]) -> None:
    if sum(counts) > _MAX_MATCHES:
        r.fail("spec.rules", f"{sum(counts)} matches in all the rules; at most {_MAX_MATCHES}")


def read_http_route(r: Reader, doc: Mapping[str, object]) -> HTTPRoute:
    meta = read_meta(r, doc)
    spec, items = _spec(r, doc)
    names: list[str] = []
    rules = tuple(_http_rule(r, item, at, names) for item, at in items) or (HttpRule(),)
    _check_total(r, [len(rule.matches) for rule in rules])
    return HTTPRoute(
        **meta, parent_refs=_parent_refs(r, spec), hostnames=_hostnames(r, spec), rules=rules
    )


def read_grpc_route(r: Reader, doc: Mapping[str, object]) -> GRPCRoute:
    meta = read_meta(r, doc)
    spec, items = _spec(r, doc)
    names: list[str] = []
    rules = tuple(_grpc_rule(r, item, at, names) for item, at in items)
    _check_total(r, [len(rule.matches) for rule in rules])
    return GRPCRoute(
        **meta, parent_refs=_parent_refs(r, spec), hostnames=_hostnames(r, spec), rules=rules
    )
