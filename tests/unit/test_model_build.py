"""``Workload.build``, ``Endpoint.build`` and ``Service.build``: the constructors the
control plane's translation uses give the value the dataclass constructor gives, and
raise what it raises; JSON (the config stream) still goes through the constructor."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from mesh.jsonform import ModelError
from mesh.model import Endpoint, Service, ServicePort, Workload

WORKLOAD: dict[str, Any] = {
    "uid": "shop/web-1",
    "name": "web-1",
    "namespace": "shop",
    "service_account": "web",
    "node": "node-1",
    "ip": "10.0.0.1",
    "labels": (("version", "v1"), ("app", "web")),
    "protocol": "HBONE",
    "trust_domain": "example.org",
    "container_ports": (("metrics", 9090), ("http", 8080)),
    "waypoint": "shop/waypoint",
}


def same(built: Any, made: Any) -> None:
    """Equal in every way a caller can tell: value, hash, fields, JSON, cached values."""
    assert type(built) is type(made)
    assert built == made
    assert hash(built) == hash(made)
    for f in dataclasses.fields(made):
        assert getattr(built, f.name) == getattr(made, f.name), f.name
    assert built.to_json() == made.to_json()
    assert type(made).from_json(built.to_json()) == made
    if hasattr(made, "key"):
        assert built.key == made.key
    if isinstance(made, Workload):
        assert built.identity == made.identity


def random_workload(rng: random.Random) -> dict[str, Any]:
    labels = [(rng.choice("abcd"), rng.choice("xyz")) for _ in range(rng.randrange(5))]
    ports = [(rng.choice(["http", "grpc", "admin"]), rng.randrange(1, 65536)) for _ in range(3)]
    return (
        WORKLOAD
        | {
            "ip": rng.choice(["10.1.2.3", "fd00::1", "192.168.0.254"]),
            "labels": tuple(labels),  # unsorted, repeated keys: the last counts
            "protocol": rng.choice(["HBONE", "TCP"]),
            "trust_domain": rng.choice(["cluster.local", "example.org"]),
            "container_ports": tuple(ports[: rng.randrange(4)]),
            "waypoint": rng.choice([None, "shop/waypoint", "other/wp"]),
        }
    )


def test_workload_build_is_the_constructor() -> None:
    rng = random.Random(7)
    for _ in range(200):
        fields = random_workload(rng)
        same(Workload.build(**fields), Workload(**fields))
    same(Workload.build(*WORKLOAD.values()), Workload(*WORKLOAD.values()))


def test_build_takes_lists_too() -> None:
    fields = WORKLOAD | {"labels": [["b", "2"], ["a", "1"]], "container_ports": [("http", 80)]}
    same(Workload.build(**fields), Workload(**fields))
    same(
        Endpoint.build("shop/web-1", "10.0.0.1", [(443, 8443), (80, 8080)]),  # type: ignore[arg-type]
        Endpoint("shop/web-1", "10.0.0.1", [(443, 8443), (80, 8080)]),  # type: ignore[arg-type]
    )


def test_workloads_with_equal_labels_share_them() -> None:
    a = Workload.build(**(WORKLOAD | {"labels": (("b", "2"), ("a", "1"))}))
    b = Workload.build(**(WORKLOAD | {"uid": "shop/web-2", "labels": (("b", "2"), ("a", "1"))}))
    assert a.labels == (("a", "1"), ("b", "2"))
    assert a.labels is b.labels


BAD_WORKLOADS = [
    ({"ip": "10.0.0"}, "workload shop/web-1: '10.0.0' is not an IP address"),
    ({"protocol": "UDP"}, "protocol"),
    ({"service_account": "Bad_SA"}, "workload shop/web-1: service account 'Bad_SA'"),
    ({"namespace": "-shop"}, "namespace '-shop'"),
    ({"trust_domain": "Example.org"}, "trust domain"),
    ({"container_ports": (("http", 0),)}, "container port http: port 0"),
    ({"container_ports": (("http", True),)}, "container port http"),
    ({"container_ports": (("http", "80"),)}, "container port http"),
    ({"waypoint": "waypoint"}, "waypoint 'waypoint' is not namespace/name"),
    ({"waypoint": "shop/"}, "is not namespace/name"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_WORKLOADS)
def test_workload_build_refuses_what_the_constructor_refuses(
    changes: dict[str, Any], message: str
) -> None:
    fields = WORKLOAD | changes
    with pytest.raises(ModelError, match=message) as made:
        Workload(**fields)
    with pytest.raises(ModelError) as built:
        Workload.build(**fields)
    assert str(built.value) == str(made.value)


@pytest.mark.parametrize("changes", [changes for changes, _ in BAD_WORKLOADS])
def test_json_still_refuses_bad_workloads(changes: dict[str, Any]) -> None:
    """What a proxy receives is checked whole, whatever made it."""
    good = Workload.build(**WORKLOAD).to_json()
    bad = good | {k: dict(v) if k == "container_ports" else v for k, v in changes.items()}
    with pytest.raises(ModelError):  # by the JSON form's types, or as the constructor does
        Workload.from_json(bad)


def test_what_the_constructor_takes_build_takes() -> None:
    fields = WORKLOAD | {"ip": 167772161}  # ipaddress reads an integer as an address
    assert Workload.build(**fields) == Workload(**fields)


def test_endpoint_build_is_the_constructor() -> None:
    for ports in [((80, 8080),), ((443, 8443), (80, 8080)), ((80, 1), (80, 2)), ()]:
        same(
            Endpoint.build("shop/web-1", "10.0.0.1", ports),
            Endpoint("shop/web-1", "10.0.0.1", ports),
        )


@pytest.mark.parametrize(
    ("ip", "ports", "message"),
    [
        ("10.0.0.256", ((80, 8080),), "endpoint shop/web-1: '10.0.0.256' is not an IP"),
        ("10.0.0.1", ((0, 8080),), "endpoint shop/web-1: port 0"),
        ("10.0.0.1", ((80, 65536),), "endpoint shop/web-1: target: port 65536"),
        ("10.0.0.1", ((80, False),), "target: port False"),
    ],
)
def test_endpoint_build_refuses_what_the_constructor_refuses(
    ip: str, ports: tuple[tuple[int, int], ...], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as made:
        Endpoint("shop/web-1", ip, ports)
    with pytest.raises(ModelError) as built:
        Endpoint.build("shop/web-1", ip, ports)
    assert str(built.value) == str(made.value)
    good = Endpoint.build("shop/web-1", "10.0.0.1", ((80, 8080),)).to_json()
    with pytest.raises(ModelError):
        Endpoint.from_json(good | {"ip": ip, "ports": [list(p) for p in ports]})


def test_service_build_is_the_constructor() -> None:
    ports = (ServicePort(443, 8443, "https"), ServicePort(80, 0, "http", target_port_name="http"))
    endpoints = (
        Endpoint("shop/web-2", "10.0.0.2", ((80, 8080),)),
        Endpoint("shop/web-1", "10.0.0.1", ((80, 8080), (443, 8443))),
    )
    for waypoint in (None, "shop/waypoint"):
        args = ("web", "shop", "10.96.0.1", ports, endpoints, waypoint)
        same(Service.build(*args), Service(*args))
    same(
        Service.build("web", "shop", "fd00::10", (), ()), Service("web", "shop", "fd00::10", (), ())
    )


@pytest.mark.parametrize(
    ("vip", "waypoint", "message"),
    [
        ("10.96.0", None, "service shop/web: '10.96.0' is not an IP address"),
        ("10.96.0.1", "a/b/c", "service shop/web: waypoint 'a/b/c' is not namespace/name"),
    ],
)
def test_service_build_refuses_what_the_constructor_refuses(
    vip: str, waypoint: str | None, message: str
) -> None:
    with pytest.raises(ModelError, match=message) as made:
        Service("web", "shop", vip, (), (), waypoint)
    with pytest.raises(ModelError) as built:
        Service.build("web", "shop", vip, (), (), waypoint)
    assert str(built.value) == str(made.value)
    good = Service.build("web", "shop", "10.96.0.1", (), ()).to_json()
    with pytest.raises(ModelError, match=message):
        Service.from_json(good | {"vip": vip, "waypoint": waypoint})


def test_a_built_value_replaced_is_checked_again() -> None:
    built = Workload.build(**WORKLOAD)
    assert dataclasses.replace(built, waypoint=None) == Workload(**(WORKLOAD | {"waypoint": None}))
    with pytest.raises(ModelError, match="not an IP address"):
        dataclasses.replace(built, ip="nope")
