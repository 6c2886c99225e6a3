"""An HTTP request as the waypoint's route table sees it: a small frozen value, no body.

:class:`HttpRequest` holds the method, the path as sent (query included), the request's
own authority (the ``Host`` header, or ``:authority`` in HTTP/2: what the client wrote,
never used to pick a Service) and the other headers as ``(name, value)`` pairs with
lower-case names, in order, repeats kept. Lookups the matchers need (the path without
its query, the query parameters, a header's combined value) are computed once per
request. :func:`split_authority` reads ``host[:port]`` forms. Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TypeAlias
from urllib.parse import unquote

Headers: TypeAlias = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HttpRequest:
    """One request. ``headers`` exclude ``Host`` and HTTP/2 pseudo-headers (``authority``
    and ``method`` carry them); their names are lower-cased here whatever the caller
    gave. ``scheme`` is what the client used (inside the mesh, ``http``)."""

    method: str
    path: str
    authority: str = ""
    headers: Headers = ()
    scheme: str = "http"

    def __post_init__(self) -> None:
        if any(name != name.lower() for name, _ in self.headers):
            lowered = tuple((name.lower(), value) for name, value in self.headers)
            object.__setattr__(self, "headers", lowered)

    @cached_property
    def path_only(self) -> str:
        """The path without its query (``/a?b=1`` -> ``/a``)."""
        return self.path.partition("?")[0]

    @cached_property
    def query(self) -> str:
        """The query after ``?``, as sent; "" when there is none."""
        return self.path.partition("?")[2]

    @cached_property
    def query_params(self) -> dict[str, str]:
        """Each query parameter's first value, names and values percent-decoded (``+`` is
        kept: it is a space only in form bodies)."""
        params: dict[str, str] = {}
        for part in self.query.split("&"):
            if part:
                name, _, value = part.partition("=")
                params.setdefault(unquote(name), unquote(value))
        return params

    @cached_property
    def _values(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name, value in self.headers:
            found.setdefault(name, []).append(value)
        return found

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case): repeats joined with ``,`` as RFC 9110
        allows; None when absent. ``host`` is :attr:`authority`."""
        name = name.lower()
        if name == "host":
            return self.authority or None
        values = self._values.get(name)
        return ",".join(values) if values is not None else None

    def with_headers(self, headers: Headers) -> HttpRequest:
        return replace(self, headers=headers)

    @property
    def host(self) -> str:
        """The host of :attr:`authority`, without its port."""
        return split_authority(self.authority)[0]


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` for IPv6) as (host, port or None). A port that is
    not 1-65535 in ASCII digits is left in the host, so it matches nothing."""
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep:
            return authority, None
        port_text = rest[1:] if rest.startswith(":") else ""
        return host, _port(port_text)
    host, sep, port_text = authority.rpartition(":")
    if not sep or ":" in host:
        return authority, None
    port = _port(port_text)
    return (host, port) if port is not None else (authority, None)


def _port(text: str) -> int | None:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None
