"""What ``ambit why`` reports: the :class:`Step` each proxy takes, the rules and routes it
looked at (:class:`Check`), and the :class:`Verdict`. Plain data with a JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """One rule or route entry looked at: what it is, whether it matched, and why (the
    conditions met, or the first that failed)."""

    name: str  # "DENY policy ns/name rule 1", "HTTPRoute ns/name rule 0 match 1"
    matched: bool
    words: str


@dataclass(frozen=True)
class Shadowed:
    """A route rule that also matches the request but ranks after the one that answered
    it, and ``reason``: the first place of the waypoint's order it lost on."""

    kind: str  # "HTTPRoute", "GRPCRoute"
    route: str  # ns/name
    rule: int
    name: str  # the rule's name, "" for none
    reason: str  # "shorter path prefix /api than /api/v2", "newer route (...)"

    def words(self) -> str:
        name = f" named {self.name}" if self.name else ""
        return f"{self.route} rule {self.rule}{name} ({self.reason})"


@dataclass(frozen=True)
class Step:
    """One decision, at one place on the path, in the order the proxies take them."""

    at: str  # "source", "ztunnel node-1 (outbound)", "waypoint ns/name", ...
    what: str  # "capture", "plan", "peer authentication", "authorization", "route", ...
    outcome: str  # a word or two: "captured", "allowed", "denied", "matched", ...
    detail: str  # plain words
    checks: tuple[Check, ...] = ()
    shadowed: tuple[Shadowed, ...] = ()  # route steps: rules that also match, ranked after


@dataclass(frozen=True)
class Verdict:
    """What the client sees. ``status``: the HTTP status a proxy answers itself, or None
    (the app answers; or, for a refused connection, none at all). ``flag``: Istio's
    response flag in the metrics of the proxy that decided (``-`` for none)."""

    allowed: bool
    status: int | None
    flag: str
    summary: str


@dataclass(frozen=True)
class Explanation:
    source: str
    destination: str
    request: dict[str, Any] | None  # method, path, host, headers; None for plain TCP
    steps: tuple[Step, ...]
    verdict: Verdict
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
