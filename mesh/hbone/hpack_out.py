"""The HPACK encoder of ambit's HTTP/2 engine (RFC 7541): the static table only.

Every field is a static-table index (``:method GET``, ``:status 200``...) or a literal
*without indexing* whose name is a static index when there is one, its value raw
(no Huffman code). The peer's dynamic table is never touched, so a field always
encodes to the same bytes and each distinct field is encoded once and then looked up.

Why: hpack's encoder searched its dynamic table and Huffman-coded every value, 30-42
us for a request's eight fields (measured here); this costs a dict lookup a field
(2-4 us a block) at the price of larger header blocks (about 45 bytes more for a
typical request), which inside the mesh costs nothing that matters. Decoding what
peers send stays with hpack's decoder, which understands every representation.

A peer that lowers SETTINGS_HEADER_TABLE_SIZE gets the dynamic table size update
RFC 7541 §4.2 asks for at the start of the next block (our table stays empty anyway).
"""

from __future__ import annotations

from typing import Final

from hpack.table import HeaderTable

_STATIC: Final = HeaderTable.STATIC_TABLE
_FULL: Final = {(n.decode(), v.decode()): i for i, (n, v) in enumerate(_STATIC, 1) if v}
_NAMES: Final[dict[str, int]] = {}
for _i, (_n, _v) in enumerate(_STATIC, 1):
    _NAMES.setdefault(_n.decode(), _i)
# Values an intermediary must never put in a table (RFC 7541 §7.1.3).
_NEVER_INDEXED: Final = frozenset({"authorization", "proxy-authorization"})
_CACHE_LIMIT: Final = 4096


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: ``value`` with an N-bit prefix, ``first`` holding the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7, 0) + data


def encode_field(name: str, value: str) -> bytes:
    """One field's representation (see the module's docstring)."""
    if (index := _FULL.get((name, value))) is not None:
        return _integer(index, 7, 0x80)
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    raw = value.encode()
    if (index := _NAMES.get(name)) is not None:
        return _integer(index, 4, first) + _string(raw)
    return bytes((first,)) + _string(name.encode()) + _string(raw)


class StaticEncoder:
    """Encodes header lists; one per connection (it keeps the size update owed)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], bytes] = {}
        self._table_size_update: int | None = None

    def peer_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: acknowledge it in the next block."""
        self._table_size_update = size

    def encode(self, headers: list[tuple[str, str]]) -> bytes:
        cache = self._cache
        parts = []
        if self._table_size_update is not None:
            parts.append(_integer(self._table_size_update, 5, 0x20))
            self._table_size_update = None
        for field in headers:
            encoded = cache.get(field)
            if encoded is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                encoded = cache[field] = encode_field(*field)
            parts.append(encoded)
        return b"".join(parts)
