"""Huffman-coded HPACK strings decoded once: hpack's decoder, remembering short strings.

hpack decodes a Huffman-coded string in Python, half a byte a step (about 0.3 µs a
byte). An app that sends its response headers as literals without indexing, as nginx
does over HTTP/2, makes the waypoint decode the same strings (``server``,
``content-type``, an ``etag``...) on every response: a sixth of the waypoint's CPU
over h2c before this module (py-spy: ``decode_huffman`` and the literal decoding
around it). :func:`install` puts :func:`decode_huffman` in hpack's decoder: strings up
to :data:`MAX_INPUT` bytes are looked up in a table of at most :data:`MAX_ENTRIES`
(emptied when full, so a peer sending ever new strings costs a bounded table and
hpack's own speed), longer ones decoded as before. An invalid string raises as
hpack's does and is not remembered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

import hpack.hpack
from hpack.huffman_table import decode_huffman as _hpack_decode

MAX_INPUT: Final = 64  # bytes of a Huffman-coded string remembered (a date is 22)
MAX_ENTRIES: Final = 1024  # at most about 150 KB of keys and values

Decode = Callable[[bytes | bytearray | memoryview | None], bytes]
_decode: Final = cast(Decode, _hpack_decode)  # hpack's own (never the one installed)
_table: dict[bytes, bytes] = {}


def decode_huffman(data: bytes | bytearray | memoryview | None) -> bytes:
    """hpack's ``decode_huffman``, remembering the short strings it decodes."""
    if not data or len(data) > MAX_INPUT:
        return _decode(data)
    key = bytes(data)
    found = _table.get(key)
    if found is None:
        found = _decode(key)  # raises HPACKDecodingError on an invalid string
        if len(_table) >= MAX_ENTRIES:
            _table.clear()
        _table[key] = found
    return found


def install() -> None:
    """Have hpack's decoder use :func:`decode_huffman` (idempotent)."""
    vars(hpack.hpack)["decode_huffman"] = decode_huffman


def entries() -> int:
    return len(_table)
