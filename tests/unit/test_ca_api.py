"""The CA's HTTP/2 API without sockets: an h2 client talks to H2ServerProtocol in memory."""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from ca import CertificateAuthority, StaticAuthorizer, TokenAuthenticator
from ca.api import MAX_BODY_BYTES, CertificateApi, H2ServerProtocol
from mesh.identity import SpiffeId, build_csr, generate_key

WEB = SpiffeId("cluster.local", "default", "web")
AUTH = ("authorization", "Bearer t0ken")


class Exchange:
    """An h2 client wired to the server protocol; bytes move only when pumped."""

    def __init__(self, client_window: int | None = None) -> None:
        authority = CertificateAuthority.create(intermediate=True)
        api = CertificateApi(
            authority,
            TokenAuthenticator({"t0ken": "node-a"}),
            StaticAuthorizer({"node-a": {WEB}}),
        )
        self.server = H2ServerProtocol(api.handle, src="memory")
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
        self.client.initiate_connection()
        if client_window is not None:
            self.client.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: client_window}
            )
        self.to_client = self.server.initiate()
        self.status: dict[int, int] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()

    def request(self, body: bytes, *headers: tuple[str, str]) -> int:
        stream_id = self.client.get_next_available_stream_id()
        request = [(":method", "POST"), (":scheme", "https"), (":authority", "ca")]
        self.client.send_headers(stream_id, [*request, (":path", "/v1/certificates"), *headers])
        self.client.send_data(stream_id, body, end_stream=True)
        return stream_id

    def pump(self, *, acknowledge: bool = True) -> None:
        for _ in range(20):
            to_server = self.client.data_to_send()
            if to_server:
                self.to_client += self.server.receive(to_server)
            if not self.to_client:
                return
            data, self.to_client = self.to_client, b""
            for event in self.client.receive_data(data):
                self._on(event, acknowledge)
        raise AssertionError("the exchange never settled")

    def _on(self, event: h2.events.Event, acknowledge: bool) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.status[event.stream_id] = next(
                int(v) for k, v in event.headers if k in (":status", b":status")
            )
        elif isinstance(event, h2.events.DataReceived):
            self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
            if acknowledge:
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset.add(event.stream_id)

    def answer(self, stream_id: int) -> dict[str, Any]:
        assert stream_id in self.ended
        result: dict[str, Any] = json.loads(self.bodies[stream_id])
        return result


def csr_body() -> bytes:
    return json.dumps({"csr": build_csr(WEB, generate_key()).decode()}).encode()


def test_signs_over_http2_in_memory() -> None:
    exchange = Exchange()
    stream_id = exchange.request(csr_body(), AUTH)
    exchange.pump()
    assert exchange.status[stream_id] == 200
    answer = exchange.answer(stream_id)
    assert len(answer["certificate_chain"]) == 2
    assert len(answer["trust_bundle"]) == 1


def test_several_requests_on_one_connection() -> None:
    exchange = Exchange()
    ok = exchange.request(csr_body(), AUTH)
    anonymous = exchange.request(csr_body())
    exchange.pump()
    assert (exchange.status[ok], exchange.status[anonymous]) == (200, 401)
    assert exchange.answer(anonymous)["error"] == "unauthenticated"


def test_response_respects_a_small_client_window() -> None:
    exchange = Exchange(client_window=100)
    stream_id = exchange.request(csr_body(), AUTH)
    exchange.pump(acknowledge=False)
    assert len(exchange.bodies[stream_id]) == 100  # no more than the window allows
    assert stream_id not in exchange.ended
    exchange.client.acknowledge_received_data(100, stream_id)
    exchange.client.increment_flow_control_window(100_000, stream_id)
    exchange.pump()
    assert exchange.answer(stream_id)["certificate_chain"]


def test_oversized_body_gets_413_and_the_stream_is_cut_short() -> None:
    exchange = Exchange()
    stream_id = exchange.client.get_next_available_stream_id()
    request = [(":method", "POST"), (":scheme", "https"), (":authority", "ca")]
    exchange.client.send_headers(stream_id, [*request, (":path", "/v1/certificates"), AUTH])
    chunk = b"x" * 16_000
    for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
        exchange.client.send_data(stream_id, chunk)
        exchange.pump()
    assert exchange.status[stream_id] == 413
    assert exchange.answer(stream_id)["error"] == "body-too-large"
    assert stream_id in exchange.reset
    assert not exchange.server.closed  # the connection itself is fine


def test_garbage_closes_the_connection_with_a_reason() -> None:
    exchange = Exchange()
    goaway = exchange.server.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert exchange.server.closed
    assert exchange.server.error is not None
    assert "protocol error" in exchange.server.error
    assert goaway  # h2 says goodbye before the loop closes the socket
