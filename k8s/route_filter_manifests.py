"""The parts of HTTPRoute and GRPCRoute rules that name things and change requests: a
backend reference and the filters (header modifiers, redirect, URL rewrite, mirror,
CORS), read as :mod:`k8s.route_manifests` reads the rest of a route (the CRDs' schema
and CEL rules, API server defaults, strict specs) into :mod:`mesh.model_l7` values.

An ``ExtensionRef`` keeps the object it names (Gateway API's LocalObjectReference: group,
kind and name, in the route's namespace); ``ExternalAuth``, whose settings ambit does not
keep, its type alone; a CORS filter keeps every setting, ``maxAge`` 5 by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from k8s import gateway_manifests as g
from k8s.manifest_reader import Pairs, Reader
from mesh.model_l7 import (
    BackendRef,
    Cors,
    Filter,
    HeaderModifier,
    Mirror,
    PathModifier,
    Redirect,
    UrlRewrite,
)
from mesh.model_traffic import ExtensionRef

MAX_ITEMS = 16  # filters, backendRefs, header and query matches, header modifier entries

HTTP_METHODS: Final = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
)
# Each filter type and the field holding its settings.
_FILTER_FIELDS: Final = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}
HTTP_FILTERS: Final = tuple(_FILTER_FIELDS)
GRPC_FILTERS: Final = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "ExtensionRef",
)
_AT_MOST_ONCE: Final = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "CORS",
)
_CORS_ORIGIN_RE = re.compile(
    r"^\*$|^https?://((\*\.)?([a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+|\*)(:[0-9]{1,5})?$"
)
_MAX_CORS_ITEMS = 64


def backend_ref(r: Reader, b: Mapping[str, object], path: str, **more: object) -> BackendRef:
    """A BackendObjectReference: a Service unless ``group``/``kind`` say otherwise."""
    group = g.group(r, b.get("group"), f"{path}.group", "")
    kind = g.kind(r, b.get("kind"), f"{path}.kind", "Service")
    if b.get("port") is None and (group, kind) == ("", "Service"):
        r.fail(f"{path}.port", "required for a Service backend")
    return BackendRef(
        name=g.object_name(r, b.get("name"), f"{path}.name"),
        port=r.port(b["port"], f"{path}.port") if b.get("port") is not None else 0,
        group=group,
        kind=kind,
        namespace=g.optional_namespace(r, b.get("namespace"), f"{path}.namespace"),
        **more,  # type: ignore[arg-type]
    )


def _header_modifier(r: Reader, value: object, path: str) -> HeaderModifier:
    h = r.mapping(value, path, ("set", "add", "remove"))
    lists: dict[str, Pairs] = {}
    for key in ("set", "add"):
        pairs = []
        for item, at in r.items(h.get(key), f"{path}.{key}", MAX_ITEMS):
            e = r.mapping(item, at, ("name", "value"))
            text = r.string(e.get("value"), f"{at}.value", limit=4096)
            pairs.append((g.header_name(r, e.get("name"), f"{at}.name"), text))
        g.unique(r, [name for name, _ in pairs], f"{path}.{key}", "header")
        lists[key] = tuple(pairs)
    items = r.items(h.get("remove"), f"{path}.remove", MAX_ITEMS)
    remove = [g.header_name(r, item, at) for item, at in items]
    g.unique(r, remove, f"{path}.remove", "header")
    return HeaderModifier(lists["set"], lists["add"], tuple(remove))


def _path_modifier(r: Reader, value: object, path: str) -> PathModifier | None:
    if value is None:
        return None
    p = r.mapping(value, path, ("type", "replaceFullPath", "replacePrefixMatch"))
    modifier = r.string(p.get("type"), f"{path}.type")
    fields = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
    if modifier not in fields:
        r.fail(f"{path}.type", f"{modifier!r}: must be ReplaceFullPath or ReplacePrefixMatch")
    for other in fields.values():
        if other != fields[modifier] and other in p:
            r.fail(f"{path}.{other}", f"must not be set when type is {modifier}")
    field = fields[modifier]
    if field not in p:
        r.fail(f"{path}.{field}", f"required when type is {modifier}")
    value = r.string(p[field], f"{path}.{field}", limit=1024)
    return PathModifier(modifier, value)  # type: ignore[arg-type]


def _redirect(r: Reader, value: object, path: str) -> Redirect:
    d = r.mapping(value, path, ("scheme", "hostname", "path", "port", "statusCode"))
    scheme = r.string(d.get("scheme"), f"{path}.scheme", "")
    if scheme not in ("", "http", "https"):
        r.fail(f"{path}.scheme", f"{scheme!r}: must be http or https")
    status = d.get("statusCode", 302)
    if type(status) is not int or status not in (301, 302, 303, 307, 308):
        r.fail(f"{path}.statusCode", f"must be 301, 302, 303, 307 or 308, not {status!r}")
    host = d.get("hostname")
    return Redirect(
        scheme=scheme,
        hostname=g.hostname(r, host, f"{path}.hostname", wildcard=False) if host else "",
        path=_path_modifier(r, d.get("path"), f"{path}.path"),
        port=r.port(d["port"], f"{path}.port") if d.get("port") is not None else 0,
        status_code=status,
    )


def _rewrite(r: Reader, value: object, path: str) -> UrlRewrite:
    w = r.mapping(value, path, ("hostname", "path"))
    host = w.get("hostname")
    return UrlRewrite(
        hostname=g.hostname(r, host, f"{path}.hostname", wildcard=False) if host else "",
        path=_path_modifier(r, w.get("path"), f"{path}.path"),
    )


def _mirror(r: Reader, value: object, path: str) -> Mirror:
    m = r.mapping(value, path, ("backendRef", "percent", "fraction"))
    at = f"{path}.backendRef"
    if m.get("backendRef") is None:
        r.fail(at, "required")
    backend = r.mapping(m["backendRef"], at, ("group", "kind", "name", "namespace", "port"))
    if "percent" in m and "fraction" in m:
        r.fail(f"{path}.fraction", "set percent or fraction, not both")
    numerator, denominator = 100, 100
    if "percent" in m:
        numerator = r.integer(m["percent"], f"{path}.percent", 0, 100)
    elif "fraction" in m:
        f = r.mapping(m["fraction"], f"{path}.fraction", ("numerator", "denominator"))
        numerator = r.integer(f.get("numerator"), f"{path}.fraction.numerator", 0, 2**31 - 1)
        high = 2**31 - 1
        denominator = r.integer(f.get("denominator", 100), f"{path}.fraction.denominator", 1, high)
        if numerator > denominator:
            r.fail(f"{path}.fraction", "numerator must not be greater than denominator")
    return Mirror(backend_ref(r, backend, at), numerator, denominator)


def _cors(r: Reader, value: object, path: str) -> Cors:
    known = (
        "allowOrigins", "allowCredentials", "allowMethods", "allowHeaders", "exposeHeaders",
        "maxAge",
    )  # fmt: skip
    c = r.mapping(value, path, known)
    origins = []
    for item, at in r.items(c.get("allowOrigins"), f"{path}.allowOrigins", _MAX_CORS_ITEMS):
        origin = r.string(item, at, limit=253)
        if not _CORS_ORIGIN_RE.match(origin):
            r.fail(at, f"{origin!r} is not '*' or scheme://host[:port] (http or https)")
        origins.append(origin)
    methods = []
    for item, at in r.items(c.get("allowMethods"), f"{path}.allowMethods", 9):
        method = r.string(item, at)
        if method != "*" and method not in HTTP_METHODS:
            r.fail(at, f"{method!r}: must be '*' or one of {', '.join(HTTP_METHODS)}")
        methods.append(method)
    lists: dict[str, list[str]] = {"allowOrigins": origins, "allowMethods": methods}
    for key in ("allowHeaders", "exposeHeaders"):
        items = r.items(c.get(key), f"{path}.{key}", _MAX_CORS_ITEMS)
        lists[key] = [item if item == "*" else g.header_name(r, item, at) for item, at in items]
    for key in ("allowOrigins", "allowMethods", "allowHeaders"):
        g.unique(r, lists[key], f"{path}.{key}", "entry")
        if "*" in lists[key] and len(lists[key]) > 1:
            r.fail(f"{path}.{key}", "'*' cannot be listed beside other entries")
    credentials = c.get("allowCredentials", False)
    if type(credentials) is not bool:
        r.fail(f"{path}.allowCredentials", f"must be true or false, not {credentials!r}")
    return Cors(
        tuple(origins),
        credentials,
        tuple(methods),
        tuple(lists["allowHeaders"]),
        tuple(lists["exposeHeaders"]),
        r.integer(c.get("maxAge", 5), f"{path}.maxAge", 1, 2**31 - 1),
    )


def _filter(r: Reader, value: object, path: str, types: tuple[str, ...]) -> Filter:
    fields = [_FILTER_FIELDS[t] for t in types]
    f = r.mapping(value, path, ("type", *fields))
    filter_type = r.string(f.get("type"), f"{path}.type")
    if filter_type not in types:
        r.fail(f"{path}.type", f"{filter_type!r}: must be one of {', '.join(types)}")
    field = _FILTER_FIELDS[filter_type]
    for other in fields:
        if other != field and other in f:
            r.fail(f"{path}.{other}", f"must not be set in a {filter_type} filter")
    at = f"{path}.{field}"
    if f.get(field) is None:
        r.fail(at, f"required in a {filter_type} filter")
    settings = f[field]
    if filter_type == "RequestHeaderModifier":
        return Filter(filter_type, request_headers=_header_modifier(r, settings, at))
    if filter_type == "ResponseHeaderModifier":
        return Filter(filter_type, response_headers=_header_modifier(r, settings, at))
    if filter_type == "RequestRedirect":
        return Filter(filter_type, redirect=_redirect(r, settings, at))
    if filter_type == "URLRewrite":
        return Filter(filter_type, rewrite=_rewrite(r, settings, at))
    if filter_type == "RequestMirror":
        return Filter(filter_type, mirror=_mirror(r, settings, at))
    if filter_type == "CORS":
        return Filter(filter_type, cors=_cors(r, settings, at))
    if filter_type == "ExtensionRef":
        return Filter(filter_type, extension=_extension_ref(r, settings, at))
    r.mapping(settings, at)  # settings not kept
    return Filter(filter_type)


def _extension_ref(r: Reader, value: object, path: str) -> ExtensionRef:
    e = r.mapping(value, path, ("group", "kind", "name"))
    if e.get("group") is None:
        r.fail(f"{path}.group", "required ('' for the core group)")
    return ExtensionRef(
        g.group(r, e["group"], f"{path}.group", ""),
        g.kind(r, e.get("kind"), f"{path}.kind"),
        g.object_name(r, e.get("name"), f"{path}.name"),
    )


def filters(r: Reader, value: object, path: str, types: tuple[str, ...]) -> tuple[Filter, ...]:
    filters = [_filter(r, item, at, types) for item, at in r.items(value, path, MAX_ITEMS)]
    kinds = [f.type for f in filters]
    for i, filter_type in enumerate(kinds):
        if filter_type in _AT_MOST_ONCE and filter_type in kinds[:i]:
            r.fail(f"{path}[{i}]", f"a {filter_type} filter may appear only once")
    if "RequestRedirect" in kinds and "URLRewrite" in kinds:
        r.fail(path, "set a RequestRedirect or a URLRewrite filter, not both")
    return tuple(filters)


def replaces_prefix(filters: tuple[Filter, ...]) -> bool:
    modifiers = [
        f.redirect.path if f.redirect else f.rewrite.path if f.rewrite else None for f in filters
    ]
    return any(m is not None and m.type == "ReplacePrefixMatch" for m in modifiers)
