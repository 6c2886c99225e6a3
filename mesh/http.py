"""The request and response every small ambit HTTP server hands its routes: the admin
server (HTTP/1.1, :mod:`mesh.admin`) and the CA's API (HTTP/2, :mod:`ca.api`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

TEXT: Final = "text/plain; charset=utf-8"
JSON: Final = "application/json"


@dataclass(frozen=True)
class Request:
    """A request as a route sees it: ``path`` without its query (percent-decoded by the
    admin server), ``query`` the last value of each key, ``headers`` with lower-case
    names (repeated ones joined with ``", "``), ``src`` the client's ``ip:port``."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    src: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. ("allow", "GET, HEAD")


def json_response(
    payload: Any,
    status: int = 200,
    *,
    indent: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """``payload`` as JSON (with ``indent``, for people), with extra ``headers``."""
    text = json.dumps(payload, indent=indent) + ("\n" if indent is not None else "")
    return Response(status, text.encode(), JSON, headers)
