"""ambit's HTTP/2 protocol layer without sockets: our HPACK encoder against hpack's
decoder, decoded blocks kept only while they mean the same, malformed header lists."""

from __future__ import annotations

import hpack
import pytest

from mesh.hbone import frames
from mesh.hbone.hpack_out import StaticEncoder
from mesh.hbone.protocol import (
    DECODED_KEPT,
    H2Protocol,
    HeaderBlock,
    HeaderListTooLarge,
    Settings,
    check_request,
    check_response,
    check_trailers,
)

REQUEST = [(":method", "GET"), (":scheme", "http"), (":path", "/a"), (":authority", "web"),
           ("user-agent", "curl/8"), ("x-request-id", "r-1")]  # fmt: skip


def block(data: bytes) -> HeaderBlock:
    return HeaderBlock(1, True, [data])


def test_static_encoding_decodes_to_the_same_list_and_never_touches_the_table() -> None:
    decoder = hpack.Decoder()
    encoder = StaticEncoder()
    fields = [*REQUEST, ("authorization", "Bearer t"), ("x-long", "v" * 300)]
    for _ in range(3):
        got: object = list(decoder.decode(encoder.encode(fields)))
        assert got == fields
    assert len(decoder.header_table.dynamic_entries) == 0
    encoder.peer_table_size(0)  # the peer shrank its table: the next block says so
    shrunk = hpack.Decoder()
    shrunk.max_allowed_table_size = 0
    got_shrunk: object = list(shrunk.decode(encoder.encode(REQUEST)))
    assert got_shrunk == REQUEST


def test_a_block_that_leaves_the_table_as_it_was_is_decoded_once() -> None:
    proto = H2Protocol(client_side=False, local=Settings())
    peer = hpack.Encoder()
    first = peer.encode(REQUEST)  # incremental indexing: the table changes, nothing kept
    assert proto.decode(block(first)) == REQUEST
    again = peer.encode(REQUEST)  # all indexed now: same meaning while the table stays
    assert again != first
    calls: list[bytes] = []
    real = proto.decoder.decode

    def counting(data: bytes, raw: bool = False) -> object:
        calls.append(data)
        return real(data, raw)

    proto.decoder.decode = counting  # type: ignore[method-assign,assignment]
    assert proto.decode(block(again)) == REQUEST
    assert proto.decode(block(again)) == REQUEST
    assert proto.decode(block(again)) == REQUEST
    assert len(calls) == 1  # decoded once, then looked up


def test_a_kept_block_is_decoded_again_once_the_table_changed() -> None:
    """The same bytes mean something else once the peer's later blocks have pushed new
    entries into the table: what we decode must be what hpack's own decoder, fed the same
    blocks, says, never the block kept from before."""
    proto = H2Protocol(client_side=False, local=Settings())
    reference = hpack.Decoder()
    peer = hpack.Encoder()

    def both(data: bytes) -> list[tuple[str, str]]:
        ours = proto.decode(block(data))
        theirs: object = list(reference.decode(data))
        assert ours == theirs
        return ours

    both(peer.encode(REQUEST))  # the peer indexes these fields
    indexed = peer.encode(REQUEST)  # only references to the table now
    assert both(indexed) == REQUEST
    assert both(indexed) == REQUEST  # (kept)
    other = [(":method", "POST"), (":scheme", "http"), (":path", "/b"), (":authority", "db"),
             ("user-agent", "x"), ("x-request-id", "r-2")]  # fmt: skip
    both(peer.encode(other))  # new entries in front: the old indexes moved
    assert both(indexed) != REQUEST  # decoded anew, as the table says now


def test_the_cache_is_bounded() -> None:
    proto = H2Protocol(client_side=False, local=Settings())
    encoder = StaticEncoder()  # literals without indexing: every block may be kept
    for i in range(DECODED_KEPT * 3):
        fields = [*REQUEST[:5], ("x-request-id", f"r-{i}")]
        assert proto.decode(block(encoder.encode(fields))) == fields
    assert len(proto._decoded) <= DECODED_KEPT


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("Upper", "x")], "name"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("connection", "x")],
         "connection-specific"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("te", "gzip")], "te"),
        ([(":method", "GET"), ("x", "1"), (":scheme", "http"), (":path", "/")], "after"),
        ([(":method", "GET"), (":method", "GET"), (":scheme", "http"), (":path", "/")],
         "repeated"),
        ([(":scheme", "http"), (":path", "/")], ":method"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "")], "empty"),
        ([(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")], "CONNECT"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"),
          ("host", "b")], "disagree"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("x", " padded")], "value"),
        ([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":status", "200")],
         "not allowed"),
    ],
)  # fmt: skip
def test_malformed_requests_say_why(fields: list[tuple[str, str]], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_request(fields)


def test_well_formed_heads_pass() -> None:
    check_request(REQUEST)
    check_request([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    assert check_response([(":status", "204"), ("server", "x")]) == 204
    check_trailers([("grpc-status", "0")])
    with pytest.raises(ValueError, match="not allowed"):
        check_trailers([(":status", "200")])
    with pytest.raises(ValueError, match=":status"):
        check_response([("server", "x")])


def test_settings_are_applied_and_acknowledged() -> None:
    proto = H2Protocol(client_side=True, local=Settings())
    payload = bytes.fromhex("0004 00010000 0005 00008000 0001 00000000".replace(" ", ""))
    buf = bytearray(frames.frame_header(len(payload), frames.SETTINGS, 0, 0) + payload)
    header = frames.parse_header(buf, 0)
    changed = proto.on_settings(header, buf, frames.FRAME_HEADER_LEN)
    assert changed is not None
    assert set(changed) == {4, 5, 1}
    assert proto.remote.initial_window_size == 65_536
    assert proto.remote.max_frame_size == 32_768
    assert bytes(proto.out).endswith(frames.frame_header(0, frames.SETTINGS, 1, 0))


def test_a_header_list_over_the_limit_is_its_streams_error_and_the_table_stays_in_step() -> None:
    """Over our limit (64 KiB, or what SETTINGS say): the stream's error, decoded whole so
    that the next block, which refers to the dynamic table, still means what it says.
    Past 256 KiB decoded (a small block naming big table entries again and again: an HPACK
    bomb) it is the connection's: GOAWAY ENHANCE_YOUR_CALM."""
    proto = H2Protocol(client_side=False, local=Settings(max_header_list_size=1000))
    peer = hpack.Encoder()
    big = HeaderBlock(1, True, [peer.encode([*REQUEST, ("x-big", "b" * 2000)])])
    assert proto.decode(big)[-1] == ("x-big", "b" * 2000)
    assert isinstance(big.error, HeaderListTooLarge)
    assert big.error.stream_id == 1
    assert big.error.limit == 1000
    assert big.error.size > 2000
    after = HeaderBlock(3, True, [peer.encode(REQUEST)])  # indexed: the table's entries
    assert proto.decode(after) == REQUEST
    assert after.error is None

    bomb_peer = hpack.Encoder()
    entry = ("x-bomb", "z" * 4000)
    first = bomb_peer.encode([entry])  # now in the peer's table: one byte a reference
    again = bomb_peer.encode([entry] * 70)  # 70 x 4 KiB decoded, a few hundred bytes sent
    assert len(again) < 200
    bombed = H2Protocol(client_side=False, local=Settings())
    bombed.decode(HeaderBlock(1, True, [first]))
    with pytest.raises(frames.FrameError) as calm:
        bombed.decode(HeaderBlock(3, True, [again]))
    assert calm.value.code == frames.ENHANCE_YOUR_CALM
