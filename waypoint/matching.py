"""Route matches compiled once, and the order Gateway API gives them.

- :class:`PathMatcher`: ``Exact`` (the whole path, case-sensitive), ``PathPrefix`` by
  path segments (``/v2`` matches ``/v2``, ``/v2/`` and ``/v2/x``, never ``/v2example``; a
  trailing ``/`` in the prefix is ignored) or ``RegularExpression`` (``fullmatch``). The
  path is matched as sent, without its query: normalising it is the HTTP layer's job.
- :class:`ValueMatcher`: one header (names case-insensitive, repeats joined with ``,``)
  or query parameter (names exact, first value), ``Exact`` or ``RegularExpression``.
- :class:`HttpMatcher`: path, headers, query parameters and method, all of which must
  match; :meth:`HttpMatcher.precedence` is HTTPRoute's order: an ``Exact`` path, then the
  longest ``PathPrefix``, then a method, then the most headers, then the most query
  parameters. Regular-expression paths come after every prefix (Gateway API leaves their
  place to the implementation; this is Istio's), the longer pattern first.
- :class:`GrpcMatcher`: the service and method of a gRPC path (``/pkg.Service/Method``)
  and headers; its precedence is GRPCRoute's: the most characters of service, then of
  method, then the most headers.

Regular expressions are :mod:`mesh.route_regex`'s dialect; compiling a match outside it
raises :class:`~mesh.route_regex.RouteRegexError`. Pure; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from mesh.model_l7 import GrpcMatch, HeaderMatch, HttpMatch
from mesh.route_regex import compile_pattern
from waypoint.http_request import HttpRequest

_PATH_RANK = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}


@dataclass(frozen=True)
class PathMatcher:
    type: Literal["Exact", "PathPrefix", "RegularExpression"]
    value: str
    regex: re.Pattern[str] | None = None

    @property
    def prefix(self) -> str:
        """The prefix without a trailing ``/`` ("" for ``/``): what a path must equal or
        continue with ``/``."""
        return self.value.rstrip("/")

    def matches(self, path: str) -> bool:
        if self.type == "Exact":
            return path == self.value
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        prefix = self.prefix
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


@dataclass(frozen=True)
class ValueMatcher:
    name: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(actual) is not None
        return actual == self.value

    @property
    def wanted(self) -> str:
        """The value wanted, in words: ``x`` or ``/regex/``."""
        return f"/{self.value}/" if self.regex is not None else self.value

    def describe(self) -> str:
        return f"{self.name}={self.wanted}"


def _value_mismatch(what: str, matcher: ValueMatcher, actual: str | None) -> str:
    shown = "absent" if actual is None else repr(actual)
    return f"{what} {matcher.name} is {shown}, not {matcher.wanted}"


def _value_matchers(matches: tuple[HeaderMatch, ...], *, fold: bool) -> tuple[ValueMatcher, ...]:
    """One matcher per name, the first entry of a name winning (names folded to lower
    case for headers, exact for query parameters)."""
    out: dict[str, ValueMatcher] = {}
    for m in matches:
        name = m.name.lower() if fold else m.name
        regex = compile_pattern(m.value) if m.type == "RegularExpression" else None
        out.setdefault(name, ValueMatcher(name, m.value, regex))
    return tuple(out.values())


@dataclass(frozen=True)
class HttpMatcher:
    path: PathMatcher
    headers: tuple[ValueMatcher, ...] = ()
    query: tuple[ValueMatcher, ...] = ()
    method: str = ""

    @classmethod
    def compile(cls, match: HttpMatch) -> HttpMatcher:
        regex = compile_pattern(match.path) if match.path_type == "RegularExpression" else None
        return cls(
            PathMatcher(match.path_type, match.path, regex),
            _value_matchers(match.headers, fold=True),
            _value_matchers(match.query_params, fold=False),
            match.method,
        )

    def matches(self, request: HttpRequest) -> bool:
        if self.method and request.method != self.method:
            return False
        if not self.path.matches(request.path_only):
            return False
        if not all(h.matches(request.header(h.name)) for h in self.headers):
            return False
        params = request.query_params if self.query else {}
        return all(q.matches(params.get(q.name)) for q in self.query)

    def mismatch(self, request: HttpRequest) -> str | None:
        """Why ``request`` does not match, in words (the first part that fails, in
        :meth:`matches`' order), or None when it matches: ``ambit why``'s account of the
        entries before the one that matched."""
        if self.method and request.method != self.method:
            return f"method {request.method} is not {self.method}"
        if not self.path.matches(request.path_only):
            return f"path {request.path_only} does not match {self.path.type} {self.path.value}"
        for h in self.headers:
            if not h.matches(request.header(h.name)):
                return _value_mismatch("header", h, request.header(h.name))
        params = request.query_params if self.query else {}
        for q in self.query:
            if not q.matches(params.get(q.name)):
                return _value_mismatch("query parameter", q, params.get(q.name))
        return None

    def describe(self) -> str:
        """The match in words, as ``ambit why`` shows it."""
        parts = [f"{self.path.type} {self.path.value}"]
        parts += [f"method {self.method}"] if self.method else []
        parts += [f"header {h.describe()}" for h in self.headers]
        parts += [f"query {q.describe()}" for q in self.query]
        return ", ".join(parts)

    PRECEDENCE: ClassVar = ("path type", "path length", "method", "headers", "query")
    """What each place of :attr:`precedence` ranks (``ambit why`` names the one a rule
    ranked after the winner on)."""

    @property
    def precedence(self) -> tuple[int, ...]:
        """Smaller first: the path's kind, its length, a method, headers, parameters."""
        return (
            -_PATH_RANK[self.path.type],
            -len(self.path.value),
            -bool(self.method),
            -len(self.headers),
            -len(self.query),
        )


def grpc_method(path: str) -> tuple[str, str] | None:
    """The (service, method) of a gRPC request path ``/service/method``; None for any
    other path."""
    if not path.startswith("/"):
        return None
    service, sep, method = path[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None
    return service, method


@dataclass(frozen=True)
class GrpcMatcher:
    service: str = ""
    method: str = ""
    headers: tuple[ValueMatcher, ...] = ()
    service_regex: re.Pattern[str] | None = None
    method_regex: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, match: GrpcMatch) -> GrpcMatcher:
        regex = match.type == "RegularExpression"
        return cls(
            match.service,
            match.method,
            _value_matchers(match.headers, fold=True),
            compile_pattern(match.service) if regex and match.service else None,
            compile_pattern(match.method) if regex and match.method else None,
        )

    def matches(self, request: HttpRequest) -> bool:
        if self.service or self.method:
            found = grpc_method(request.path_only)
            if found is None:
                return False
            if not _part(found[0], self.service, self.service_regex):
                return False
            if not _part(found[1], self.method, self.method_regex):
                return False
        return all(h.matches(request.header(h.name)) for h in self.headers)

    def mismatch(self, request: HttpRequest) -> str | None:
        """Why ``request`` does not match, in words, or None (as :meth:`HttpMatcher.mismatch`)."""
        if self.service or self.method:
            found = grpc_method(request.path_only)
            if found is None:
                return f"path {request.path_only} is not a gRPC method (/service/method)"
            if not _part(found[0], self.service, self.service_regex):
                return f"gRPC service {found[0]} is not {self.service}"
            if not _part(found[1], self.method, self.method_regex):
                return f"gRPC method {found[1]} is not {self.method}"
        for h in self.headers:
            if not h.matches(request.header(h.name)):
                return _value_mismatch("header", h, request.header(h.name))
        return None

    def describe(self) -> str:
        parts = [f"service {self.service}"] if self.service else []
        parts += [f"method {self.method}"] if self.method else []
        parts += [f"header {h.describe()}" for h in self.headers]
        return ", ".join(parts) or "every gRPC request"

    PRECEDENCE: ClassVar = ("service", "method", "headers")
    """What each place of :attr:`precedence` ranks, as :attr:`HttpMatcher.PRECEDENCE`."""

    @property
    def precedence(self) -> tuple[int, ...]:
        """Smaller first: characters of service, of method, then headers."""
        return (-len(self.service), -len(self.method), -len(self.headers))


def _part(actual: str, wanted: str, regex: re.Pattern[str] | None) -> bool:
    if not wanted:
        return True
    if regex is not None:
        return regex.fullmatch(actual) is not None
    return actual == wanted
