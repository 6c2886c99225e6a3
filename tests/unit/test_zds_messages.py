"""The node agent's socket to ztunnel, sans-IO: each message parsed and encoded, and
every way a message can be wrong refused with what is wrong (and the pod's uid when
it could be read, so the error ack names it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh.zds import (
    MAX_MESSAGE,
    Ack,
    Add,
    Hello,
    PodInfo,
    Remove,
    SnapshotSent,
    ZdsProtocolError,
    encode,
    parse_ack,
    parse_request,
)

POD = PodInfo("4f1c-uid", "shop", "cart-0", "cart", ("fd00::7", "10.244.1.7"))


def pod_json(**changes: Any) -> dict[str, Any]:
    return {**POD.to_json(), **changes}


def add(**changes: Any) -> bytes:
    return json.dumps({"type": "add", "pod": pod_json(**changes)}).encode()


@pytest.mark.parametrize(
    ("message", "fds"),
    [(Hello(), 0), (Add(POD), 1), (SnapshotSent(), 0), (Remove("4f1c-uid"), 0)],
)
def test_every_request_survives_encoding(message: Any, fds: int) -> None:
    assert parse_request(encode(message), fds) == message


def test_the_wire_form_is_the_documented_one() -> None:
    assert json.loads(encode(Add(POD))) == {
        "type": "add",
        "pod": {
            "uid": "4f1c-uid",
            "namespace": "shop",
            "name": "cart-0",
            "serviceAccount": "cart",
            "ips": ["fd00::7", "10.244.1.7"],
        },
    }
    assert json.loads(encode(Hello())) == {"type": "hello", "version": 1}
    assert json.loads(encode(Ack())) == {"type": "ack"}
    assert json.loads(encode(Ack("u", "no"))) == {"type": "ack", "uid": "u", "error": "no"}


def test_a_pod_is_keyed_as_the_model_keys_its_workload_and_captured_on_ipv4() -> None:
    assert POD.key == "shop/cart-0"
    assert POD.ipv4() == "10.244.1.7"
    assert PodInfo("u", "a", "b", "c", ("fd00::1",)).ipv4() is None


def test_unknown_keys_are_ignored() -> None:
    data = json.dumps({"type": "hello", "version": 1, "features": ["x"]}).encode()
    assert parse_request(data, 0) == Hello(1)
    assert parse_request(add(labels={"a": "b"}), 1) == Add(POD)


@pytest.mark.parametrize(
    ("data", "fds", "error"),
    [
        (b"not json", 0, "not JSON"),
        (b"\xff\xfe", 0, "not JSON"),
        (b"[1, 2]", 0, "a JSON object"),
        (b'{"type": "bye"}', 0, "unknown message type 'bye'"),
        (b'{"version": 1}', 0, "unknown message type None"),
        (b'{"type": "hello"}', 0, "'version' must be an integer"),
        (b'{"type": "hello", "version": true}', 0, "'version' must be an integer"),
        (b'{"type": "remove"}', 0, "'uid'"),
        (b'{"type": "remove", "uid": ""}', 0, "'uid'"),
        (b'{"type": "add"}', 1, "'pod' must be an object"),
        (b'{"type": "hello", "version": 1}', 1, "'hello' carries 0 file descriptors, not 1"),
        (b'{"type": "snapshot_sent"}', 2, "carries 0 file descriptors, not 2"),
        (b" " * (MAX_MESSAGE + 1), 0, "at most 65536 bytes"),
    ],
)
def test_malformed_requests_are_refused_with_what_is_wrong(
    data: bytes, fds: int, error: str
) -> None:
    with pytest.raises(ZdsProtocolError, match=error) as caught:
        parse_request(data, fds)
    assert caught.value.uid is None


@pytest.mark.parametrize(
    ("changes", "fds", "error"),
    [
        ({}, 0, "'add' carries 1 file descriptor, not 0 \\(the pod's network namespace\\)"),
        ({}, 2, "carries 1 file descriptor, not 2"),
        ({"namespace": "Shop"}, 1, "'pod.namespace' must be a Kubernetes name"),
        ({"namespace": "a" * 64}, 1, "'pod.namespace'"),
        ({"name": "cart_0"}, 1, "'pod.name'"),
        ({"serviceAccount": None}, 1, "'pod.serviceAccount'"),
        ({"ips": []}, 1, "'pod.ips' must be a list of 1 to 8"),
        ({"ips": "10.0.0.1"}, 1, "'pod.ips' must be a list"),
        ({"ips": ["10.0.0.1", "10.0.0"]}, 1, "'pod.ips' holds '10.0.0', not an IP address"),
        ({"ips": [7]}, 1, "holds 7"),
    ],
)
def test_a_bad_add_is_refused_naming_its_pod(changes: dict[str, Any], fds: int, error: str) -> None:
    with pytest.raises(ZdsProtocolError, match=error) as caught:
        parse_request(add(**changes), fds)
    assert caught.value.uid == "4f1c-uid"


@pytest.mark.parametrize("uid", [None, "", 7, "x" * 129])
def test_an_add_without_a_usable_uid_names_no_pod(uid: object) -> None:
    with pytest.raises(ZdsProtocolError, match=r"'pod\.uid'") as caught:
        parse_request(add(uid=uid), 1)
    assert caught.value.uid is None


def test_acks() -> None:
    assert parse_ack(b'{"type": "ack"}') == Ack()
    assert parse_ack(encode(Ack("u", "CA refused"))) == Ack("u", "CA refused")
    with pytest.raises(ZdsProtocolError, match="expected an ack, got 'hello'"):
        parse_ack(encode(Hello()))
    with pytest.raises(ZdsProtocolError, match="strings"):
        parse_ack(b'{"type": "ack", "error": 3}')
