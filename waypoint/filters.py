"""Route filters as pure functions on requests and headers.

- :class:`FilterSet`: a rule's (or a backendRef's) filters gathered by kind, the way
  the route table keeps them; types ambit does not apply are listed in ``unsupported``.
- :func:`modify_headers`: a Request- or ResponseHeaderModifier: ``set`` replaces every
  value of a name, ``add`` appends one more (a reader sees ``old,new``), ``remove`` drops
  them all; names are case-insensitive and come out lower-case.
- :func:`replace_prefix` and :func:`modified_path`: ``ReplaceFullPath`` and
  ``ReplacePrefixMatch``, the latter by path segments with Gateway API's slash rules
  (``/foo/bar`` with prefix ``/foo`` and ``/xyz`` gives ``/xyz/bar``; a result that
  would be empty is ``/``).
- :func:`rewrite_request`: a rule's or backend's header modifier, then its URLRewrite
  (hostname into the authority, the path with its query kept).
- :func:`redirect_location`: the ``Location`` of a RequestRedirect: scheme, host and
  path from the filter or else the request, the port from the filter, else the well-known
  port of a scheme the filter sets, else the port the request came to; the port is left
  out when it is its scheme's default (http 80, https 443). The query is kept.
- :func:`mirrored`: which RequestMirrors take this request, by their fraction, with an
  injected source of randomness.

Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final, TypeAlias, TypeVar

from mesh.model_l7 import Cors, Filter, HeaderModifier, Mirror, PathModifier, Redirect, UrlRewrite
from mesh.model_traffic import ExtensionRef
from waypoint.http_request import Headers, HttpRequest

Choose: TypeAlias = Callable[[int], int]  # n -> a number in [0, n), e.g. random.randrange

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class FilterSet:
    """The filters of one rule or backendRef, by kind (each kind appears at most once,
    RequestMirror excepted)."""

    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: UrlRewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: Cors | None = None
    extensions: tuple[ExtensionRef, ...] = ()  # ambit's FaultInjection, LocalRateLimit
    unsupported: tuple[str, ...] = ()

    @classmethod
    def of(cls, filters: Iterable[Filter]) -> FilterSet:
        found: dict[str, object] = {}
        mirrors: list[Mirror] = []
        extensions: list[ExtensionRef] = []
        unsupported: list[str] = []
        for f in filters:
            if not f.supported:
                unsupported.append(f.type)
            elif f.extension is not None:
                extensions.append(f.extension)
            elif f.mirror is not None:
                mirrors.append(f.mirror)
            elif f.type == "CORS":
                found.setdefault("cors", f.cors or Cors())
            else:
                for key in ("request_headers", "response_headers", "redirect", "rewrite"):
                    value = getattr(f, key)
                    if value is not None:
                        found.setdefault(key, value)
        return cls(**found, mirrors=tuple(mirrors), extensions=tuple(extensions),  # type: ignore[arg-type]
                   unsupported=tuple(unsupported))  # fmt: skip


NO_FILTERS: Final = FilterSet()


def modify_headers(headers: Headers, modifier: HeaderModifier | None) -> Headers:
    """``headers`` after ``modifier``: set, then add, then remove."""
    if modifier is None:
        return headers
    replaced = {name.lower(): value for name, value in modifier.set}
    removed = {name.lower() for name in modifier.remove}
    out = [(n, v) for n, v in headers if n not in replaced and n not in removed]
    out.extend((n, v) for n, v in replaced.items() if n not in removed)
    out.extend((n.lower(), v) for n, v in modifier.add if n.lower() not in removed)
    return tuple(out)


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """``path`` (which the PathPrefix ``prefix`` matched) with that prefix replaced."""
    rest = path[len(prefix.rstrip("/")) :]
    return (replacement.rstrip("/") + rest) or "/"


def modified_path(path: str, modifier: PathModifier | None, prefix: str) -> str:
    """``path`` (no query) after a redirect's or rewrite's path modifier; ``prefix`` is the
    PathPrefix that matched the request ("" when the match was not a prefix)."""
    if modifier is None:
        return path
    if modifier.type == "ReplaceFullPath":
        return modifier.value
    return replace_prefix(path, prefix, modifier.value)


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def rewrite_request(request: HttpRequest, filters: FilterSet, prefix: str) -> HttpRequest:
    """``request`` after the header modifier and URLRewrite of ``filters``."""
    headers = modify_headers(request.headers, filters.request_headers)
    rewrite = filters.rewrite
    if rewrite is None:
        return request if headers is request.headers else request.with_headers(headers)
    path = request.path
    if rewrite.path is not None:
        path = _with_query(modified_path(request.path_only, rewrite.path, prefix), request.query)
    return replace(
        request, headers=headers, path=path, authority=rewrite.hostname or request.authority
    )


def redirect_location(
    request: HttpRequest, redirect: Redirect, prefix: str, listener_port: int
) -> str:
    """The ``Location`` of ``redirect`` for ``request``; ``listener_port`` is the port the
    request was sent to (the Service port, in the mesh)."""
    scheme = redirect.scheme or request.scheme
    host = redirect.hostname or request.host
    if redirect.port:
        port = redirect.port
    elif redirect.scheme:
        port = DEFAULT_PORTS.get(scheme, listener_port)
    else:
        port = listener_port
    if ":" in host:
        host = f"[{host}]"
    if DEFAULT_PORTS.get(scheme) != port:
        host = f"{host}:{port}"
    path = modified_path(request.path_only, redirect.path, prefix)
    return f"{scheme}://{host}{_with_query(path, request.query)}"


T = TypeVar("T")


def mirrored(mirrors: Iterable[tuple[T, Mirror]], choose: Choose) -> tuple[T, ...]:
    """The targets whose mirror takes this request: each with probability
    ``numerator / denominator``, drawn through ``choose``."""
    return tuple(
        target
        for target, m in mirrors
        if m.numerator >= m.denominator or (m.numerator > 0 and choose(m.denominator) < m.numerator)
    )
