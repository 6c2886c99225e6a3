"""A request target as the waypoint reads it, so that routes, policy and the app all see
the same path (Istio's default path normalization, ``BASE``). Pure; no I/O.

:func:`read_target` takes an HTTP/1.1 request target (or an HTTP/2 ``:path``) and gives
the path to route, check and forward: origin form (``/a/b?q``) normalized as RFC 3986
§6.2.2 says (percent-encoded unreserved characters decoded, other percent-encodings
upper-cased, ``.`` and ``..`` segments removed, a fragment dropped; ``%2F`` stays
encoded and ``//`` is kept, as with ``BASE``); absolute form (``http://host/a``) as its
path, with its authority (RFC 9112 §3.2.2: the target's host, not the ``Host`` header);
``*`` for OPTIONS only. Anything else is a :class:`TargetError`.
"""

from __future__ import annotations

import re
from typing import Final

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# RFC 3986 host (reg-name, IPv4 or [IPv6]) and an optional port: what a Host may say.
_HOST: Final = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?")


class TargetError(ValueError):
    """A request target the waypoint does not take (400)."""


def read_target(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """The normalized path (query kept as sent) of ``target``, and the authority an
    absolute-form target names (None for the other forms)."""
    if target.startswith(b"/"):
        return normalize_path(target), None
    if target == b"*":
        if method != b"OPTIONS":
            raise TargetError("the asterisk target is for OPTIONS only")
        return target, None
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1), default=len(rest))
        authority, path = rest[:end], rest[end:]
        if not authority or b"@" in authority or not host_is_valid(authority):
            raise TargetError("the absolute target's authority is not a host[:port]")
        if path.startswith(b"?"):
            path = b"/" + path
        return normalize_path(path or b"/"), authority
    raise TargetError("the request target is neither a path, an absolute URL nor *")


def host_is_valid(host: bytes) -> bool:
    """Whether ``host`` is an RFC 3986 ``host[:port]``."""
    return bool(host) and _HOST.fullmatch(host) is not None


def normalize_path(target: bytes) -> bytes:
    """``target`` (a path, maybe with a query and a fragment) normalized; see above."""
    path, sep, query = target.partition(b"#")[0].partition(b"?")
    if b"%" in path:
        path = _decode_unreserved(path)
    if b"/." in path:  # a "." or ".." segment follows a "/" (a dot in a name is no segment)
        path = _remove_dot_segments(path)
    return path + sep + query


def _decode_unreserved(path: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(path):
        byte = path[i]
        if byte == 0x25 and _is_hex(path[i + 1 : i + 3]):
            value = int(path[i + 1 : i + 3], 16)
            if value in _UNRESERVED:
                out.append(value)
            else:
                out += b"%" + path[i + 1 : i + 3].upper()
            i += 3
            continue
        out.append(byte)
        i += 1
    return bytes(out)


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and two[0] in _HEX and two[1] in _HEX


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 on an absolute path: ``/a/./b/../c`` -> ``/a/c``."""
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)
