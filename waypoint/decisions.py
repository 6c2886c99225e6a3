"""What the route table compiles a rule into, and what it decides for one request.

Compiled parts: a :class:`Backend` (a backendRef resolved against the snapshot's
Services), a :class:`MirrorTarget`, a :class:`Rule` (one rule of one route, its filters
gathered in a :class:`~waypoint.filters.FilterSet`).

A :data:`Decision` is one of:

- :class:`Forward`: send :attr:`Forward.request` (filters applied) to the chosen
  backend, copy it to the mirrors (fire and forget), and pass the response through
  :meth:`Forward.response_headers`; the rule's timeouts bound it;
- :class:`RedirectTo`: answer the status with a ``Location``;
- :class:`LocalReply`: answer the waypoint's own status with an Istio response flag
  (``NR`` no route, ``UH`` no healthy upstream, ``UT`` upstream timeout, ``-`` otherwise)
  and a stable ``reason`` code;
- :class:`NoRoutes`: no route applies to this destination at all: send the request to
  the Service itself, an endpoint picked per request (or, when ``service`` is None, to
  the address the client dialled: a pod IP gets no Service's routes).

Pure data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from mesh.model_l7 import GrpcRetry, HeaderModifier, Retry
from waypoint.filters import NO_FILTERS, FilterSet, modify_headers
from waypoint.http_request import Headers, HttpRequest

FLAG_NO_ROUTE: Final = "NR"
FLAG_NO_HEALTHY_UPSTREAM: Final = "UH"
FLAG_UPSTREAM_TIMEOUT: Final = "UT"
FLAG_NONE: Final = "-"


@dataclass(frozen=True)
class Backend:
    """A backendRef as the waypoint acts on it: ``service`` is the key (``ns/name``) of
    the Service it names ("" for another kind); ``resolved`` whether that Service exists
    with that port; ``ready`` whether it has an endpoint."""

    service: str
    port: int
    weight: int
    filters: FilterSet = NO_FILTERS
    resolved: bool = True
    ready: bool = True


@dataclass(frozen=True)
class MirrorTarget:
    """Where a RequestMirror sends its copies (a Service that exists, and its port)."""

    service: str
    port: int


@dataclass(frozen=True)
class Rule:
    """One rule of one route. ``route`` is the route's key; ``index`` the rule's place in
    it. Timeouts in milliseconds: None unset (the waypoint's default), 0 disabled."""

    kind: Literal["HTTPRoute", "GRPCRoute"]
    route: str
    index: int
    name: str = ""
    filters: FilterSet = NO_FILTERS
    backends: tuple[Backend, ...] = ()
    timeout_ms: int | None = None
    backend_timeout_ms: int | None = None
    retry: Retry | GrpcRetry | None = None  # GEP-1731's retry (on gRPC status: GRPCRoute's)


@dataclass(frozen=True)
class Forward:
    """Send ``request`` to ``backend``'s Service and port."""

    rule: Rule
    backend: Backend
    request: HttpRequest
    mirrors: tuple[MirrorTarget, ...] = ()
    response_modifiers: tuple[HeaderModifier, ...] = ()
    cors_headers: Headers = ()

    @property
    def timeout_ms(self) -> int | None:
        return self.rule.timeout_ms

    @property
    def backend_timeout_ms(self) -> int | None:
        return self.rule.backend_timeout_ms

    def response_headers(self, headers: Headers) -> Headers:
        """The backend's response headers as the client gets them: the rule's, then the
        backend's ResponseHeaderModifier, then the CORS headers."""
        for modifier in self.response_modifiers:
            headers = modify_headers(headers, modifier)
        return (*headers, *self.cors_headers) if self.cors_headers else headers


@dataclass(frozen=True)
class RedirectTo:
    """Answer ``status`` (301, 302, 303, 307 or 308) with ``location``."""

    status: int
    location: str
    rule: Rule


@dataclass(frozen=True)
class LocalReply:
    """The waypoint answers itself. ``reason`` is a stable code for logs and metrics."""

    status: int
    flag: str
    reason: str
    headers: Headers = ()
    rule: Rule | None = None


@dataclass(frozen=True)
class NoRoutes:
    """No route is attached to this Service and port (``service`` None: the destination
    is not a Service)."""

    service: str | None
    port: int


Decision: TypeAlias = Forward | RedirectTo | LocalReply | NoRoutes

NO_ROUTE: Final = LocalReply(404, FLAG_NO_ROUTE, "no_route")


def timeout_reply(rule: Rule | None = None) -> LocalReply:
    """What to answer when ``timeouts.request`` or ``timeouts.backendRequest`` expires."""
    return LocalReply(504, FLAG_UPSTREAM_TIMEOUT, "timeout", rule=rule)
