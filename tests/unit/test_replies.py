"""The waypoint's local replies: HTTP and gRPC shapes, gRPC's status table, Envoy's bodies."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h11
import pytest

from mesh.reason import FLAG_CONNECT, FLAG_DENY, FLAG_NONE
from mesh.response_flags import ResponseFlag
from waypoint.jwt import JwtFailure
from waypoint.replies import (
    GrpcStatus,
    LocalReply,
    grpc_status_for,
    is_grpc,
    jwt_refused,
    local_reply,
    no_healthy_upstream,
    no_route,
    percent_encode,
    rbac_denied,
    route_timeout,
    upstream_failure,
)


@pytest.mark.parametrize(
    ("http", "grpc"),
    [
        (400, GrpcStatus.INTERNAL),
        (401, GrpcStatus.UNAUTHENTICATED),
        (403, GrpcStatus.PERMISSION_DENIED),
        (404, GrpcStatus.UNIMPLEMENTED),
        (429, GrpcStatus.UNAVAILABLE),
        (502, GrpcStatus.UNAVAILABLE),
        (503, GrpcStatus.UNAVAILABLE),
        (504, GrpcStatus.UNAVAILABLE),
        (200, GrpcStatus.UNKNOWN),
        (409, GrpcStatus.UNKNOWN),
        (500, GrpcStatus.UNKNOWN),
    ],
)
def test_grpcs_http_to_grpc_table(http: int, grpc: GrpcStatus) -> None:
    assert grpc_status_for(http) is grpc


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("Application/GRPC; charset=utf-8", True),
        ("application/grpc-web", False),
        ("application/grpc-web+proto", False),
        ("application/json", False),
    ],
)
def test_is_grpc(content_type: str, grpc: bool) -> None:
    assert is_grpc([(":method", "POST"), ("Content-Type", content_type)]) is grpc
    assert not is_grpc([(":method", "POST")])


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encode("RBAC: access denied") == "RBAC: access denied"
    assert percent_encode("100% sûr\n") == "100%25 s%C3%BBr%0A"


def test_rbac_denied_over_http() -> None:
    reply = rbac_denied(grpc=False, details="rbac_access_denied_matched_policy[none]")
    assert reply == LocalReply(
        403,
        (("content-type", "text/plain"), ("content-length", "19")),
        b"RBAC: access denied",
        403,
        ResponseFlag.NONE,
        "rbac_access_denied_matched_policy[none]",
    )
    assert not reply.trailers_only
    assert reply.h2_headers()[0] == (":status", "403")


def test_rbac_denied_to_a_grpc_caller_is_trailers_only() -> None:
    reply = rbac_denied(grpc=True)
    assert reply.trailers_only
    assert reply.h2_headers() == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "7"),
        ("grpc-message", "RBAC: access denied"),
    ]
    assert (reply.body, reply.code, reply.grpc_status) == (b"", 403, GrpcStatus.PERMISSION_DENIED)


def test_jwt_refusals_carry_envoys_reason_and_challenge() -> None:
    reply = jwt_refused(JwtFailure.EXPIRED, grpc=False, realm="http://web/api")
    assert (reply.status, reply.body) == (401, b"Jwt is expired")
    assert ("www-authenticate", 'Bearer realm="http://web/api", error="invalid_token"') in (
        reply.headers
    )
    assert reply.details == "jwt_authn_access_denied{Jwt_is_expired}"
    grpc = jwt_refused(JwtFailure.VERIFICATION_FAILED, grpc=True, realm="http://web/svc.M")
    assert dict(grpc.headers)["grpc-status"] == str(GrpcStatus.UNAUTHENTICATED.value)
    assert dict(grpc.headers)["grpc-message"] == "Jwt verification fails"
    audience = jwt_refused(JwtFailure.AUDIENCE_NOT_ALLOWED, grpc=True, realm="http://web/")
    assert (audience.code, audience.grpc_status) == (403, GrpcStatus.PERMISSION_DENIED)


@pytest.mark.parametrize(
    ("reply", "code", "body", "flag", "grpc_status"),
    [
        (no_route(grpc=True), 404, "", "NR", GrpcStatus.UNIMPLEMENTED),
        (no_healthy_upstream(grpc=True), 503, "no healthy upstream", "UH", GrpcStatus.UNAVAILABLE),
        (
            upstream_failure(grpc=True, connected=False),
            503,
            "upstream connect error or disconnect/reset before headers. reset reason:"
            " connection failure",
            "UF",
            GrpcStatus.UNAVAILABLE,
        ),
        (
            upstream_failure(grpc=True, connected=True),
            503,
            "upstream connect error or disconnect/reset before headers. reset reason:"
            " connection termination",
            "UC",
            GrpcStatus.UNAVAILABLE,
        ),
        (
            upstream_failure(grpc=True, connected=False, retries_exhausted=True),
            503,
            "upstream connect error or disconnect/reset before headers. reset reason:"
            " connection failure",
            "URX",
            GrpcStatus.UNAVAILABLE,
        ),
        (
            route_timeout(grpc=True),
            504,
            "upstream request timeout",
            "UT",
            GrpcStatus.DEADLINE_EXCEEDED,
        ),
    ],
)
def test_proxy_failures(
    reply: LocalReply, code: int, body: str, flag: str, grpc_status: GrpcStatus
) -> None:
    headers = dict(reply.headers)
    assert (reply.code, reply.flag.value, reply.grpc_status) == (code, flag, grpc_status)
    assert headers.get("grpc-message", "") == percent_encode(body)


def test_route_timeout_over_http_is_504() -> None:
    reply = route_timeout(grpc=False)
    assert (reply.status, reply.body, reply.details) == (
        504,
        b"upstream request timeout",
        "upstream_response_timeout",
    )


@pytest.mark.parametrize(
    "reply",
    [
        rbac_denied(grpc=False),
        rbac_denied(grpc=True),
        no_route(grpc=False),
        local_reply(599, "odd", grpc=False),
    ],
)
@pytest.mark.parametrize("keep_alive", [True, False])
def test_http1_replies_parse(reply: LocalReply, keep_alive: bool) -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "web")]))
    client.send(h11.EndOfMessage())
    client.receive_data(reply.http1(keep_alive=keep_alive))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == reply.status
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    assert body == reply.body
    assert (client.their_state is h11.MUST_CLOSE) is not keep_alive


def test_ztunnels_flags_come_from_the_one_enum() -> None:
    assert (FLAG_NONE, FLAG_DENY, FLAG_CONNECT) == ("-", "DENY", "CONNECT")
    assert str(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT) == "UT"


def test_a_trailers_only_reply_is_one_valid_http2_header_block() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    request = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "web"),
        (":path", "/pkg.Svc/Method"),
        ("content-type", "application/grpc"),
    ]
    client.send_headers(1, request, end_stream=True)
    server.receive_data(client.data_to_send())
    reply = rbac_denied(grpc=True)
    server.send_headers(1, reply.h2_headers(), end_stream=reply.trailers_only)
    events = client.receive_data(server.data_to_send())
    kinds = [type(e) for e in events if not isinstance(e, h2.events.RemoteSettingsChanged)]
    assert h2.events.ResponseReceived in kinds
    assert h2.events.StreamEnded in kinds
