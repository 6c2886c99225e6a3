"""Huffman-coded HPACK strings remembered (mesh.hbone.huffman_memo): hpack's decoder, as
the engine uses it, reads header blocks exactly as without the table; an invalid string
fails as before and is not remembered; the table stays bounded."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

import mesh.hbone.protocol  # noqa: F401  (installs the table, as the engine does)
from mesh.hbone import huffman_memo

NGINX = [
    (":status", "200"), ("server", "nginx/1.22.1"), ("date", "Tue, 08 Dec 2026 00:20:00 GMT"),
    ("content-type", "text/html"), ("content-length", "1024"),
    ("last-modified", "Mon, 07 Dec 2026 23:49:12 GMT"), ("etag", '"6575a2b8-400"'),
    ("accept-ranges", "bytes"), ("x-long", "v" * 300),
]  # fmt: skip


def huffman(text: bytes) -> bytes:
    return HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(text)


def test_blocks_decode_as_without_the_table() -> None:
    encoder = hpack.Encoder()  # Huffman-codes what it does not index, as nginx does
    decoder = hpack.Decoder()
    for second in range(5):  # the same headers again, the date changing
        headers = [(n, v.replace("00:20:00", f"00:20:0{second}")) for n, v in NGINX]
        block = encoder.encode(headers, huffman=True)
        expected = [(n.encode(), v.encode()) for n, v in headers]
        assert [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)] == expected
    assert 0 < huffman_memo.entries() <= huffman_memo.MAX_ENTRIES


def test_direct_decoding_matches_hpack_and_long_strings_are_not_kept() -> None:
    for text in (b"nginx/1.22.1", b"text/html", b"x" * 64, b"y" * 65, b"\x00\xff" * 40):
        coded = huffman(text)
        assert huffman_memo.decode_huffman(coded) == text
        assert huffman_memo.decode_huffman(memoryview(coded)) == text
    before = huffman_memo.entries()
    huffman_memo.decode_huffman(huffman(b"z" * 200))  # its code is over MAX_INPUT bytes
    assert huffman_memo.entries() == before


def test_an_invalid_string_fails_and_is_not_kept() -> None:
    invalid = b"\xff\xff\xff\xff"  # EOS: a decoding error in hpack
    before = huffman_memo.entries()
    for _ in range(2):
        with pytest.raises(hpack.HPACKDecodingError):
            huffman_memo.decode_huffman(invalid)
    assert huffman_memo.entries() == before


def test_the_table_stays_bounded() -> None:
    for i in range(huffman_memo.MAX_ENTRIES + 50):
        assert huffman_memo.decode_huffman(huffman(b"v%d" % i)) == b"v%d" % i
    assert huffman_memo.entries() <= huffman_memo.MAX_ENTRIES
