"""EndpointSlice (``discovery.k8s.io/v1``) and Node, read from manifests or the API,
keeping what the mesh uses: a slice's Service (the ``kubernetes.io/service-name``
label), address type, ports and endpoints (first address, ready/serving/terminating,
the Pod it is, node and zone); a Node's topology labels and InternalIP. Re-exported
by :mod:`k8s.manifests`, which declares every kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from k8s.manifest_reader import Meta, Reader, read_meta

LABEL_SERVICE_NAME: Final = "kubernetes.io/service-name"
LABEL_TOPOLOGY_REGION: Final = "topology.kubernetes.io/region"
LABEL_TOPOLOGY_ZONE: Final = "topology.kubernetes.io/zone"
ADDRESS_TYPES: Final = ("IPv4", "IPv6", "FQDN")
MAX_SLICE_ENDPOINTS: Final = 1000  # the API server's limit
MAX_SLICE_PORTS: Final = 100


@dataclass(frozen=True, kw_only=True)
class SlicePort:
    """A port of an EndpointSlice. ``port`` None: every port (the API's nil port)."""

    port: int | None
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True, kw_only=True)
class SliceEndpoint:
    """One endpoint of a slice: its first address (the only one kube-proxy reads), its
    conditions (unset ``ready`` and ``serving`` mean true, as the API says), the Pod it
    is (``targetRef`` of kind Pod: its namespace and name), its node and zone."""

    address: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    pod: tuple[str, str] | None = None  # (namespace, name)
    node_name: str = ""
    zone: str = ""


@dataclass(frozen=True, kw_only=True)
class EndpointSlice(Meta):
    address_type: str = "IPv4"
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()

    @property
    def service_name(self) -> str:
        """The Service the slice belongs to (its ``kubernetes.io/service-name`` label), or
        "" for a slice of none."""
        return next((v for k, v in self.labels if k == LABEL_SERVICE_NAME), "")


@dataclass(frozen=True, kw_only=True)
class Node(Meta):
    namespace: str = ""
    internal_ip: str | None = None

    @property
    def region(self) -> str:
        return next((v for k, v in self.labels if k == LABEL_TOPOLOGY_REGION), "")

    @property
    def zone(self) -> str:
        return next((v for k, v in self.labels if k == LABEL_TOPOLOGY_ZONE), "")


def read_endpoint_slice(r: Reader, doc: Mapping[str, object]) -> EndpointSlice:
    meta = read_meta(r, doc)
    address_type = r.string(doc.get("addressType"), "addressType")
    if address_type not in ADDRESS_TYPES:
        r.fail("addressType", f"must be one of {', '.join(ADDRESS_TYPES)}, not {address_type!r}")
    ports = []
    for item, path in r.items(doc.get("ports"), "ports", MAX_SLICE_PORTS):
        p = r.mapping(item, path)
        protocol = r.string(p.get("protocol"), f"{path}.protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            r.fail(f"{path}.protocol", f"must be TCP, UDP or SCTP, not {protocol!r}")
        ports.append(
            SlicePort(
                port=r.port(p["port"], f"{path}.port") if p.get("port") is not None else None,
                name=r.port_name(p["name"], f"{path}.name") if p.get("name") else "",
                protocol=protocol,
                app_protocol=r.string(p.get("appProtocol"), f"{path}.appProtocol", ""),
            )
        )
    endpoints = []
    for item, path in r.items(doc.get("endpoints"), "endpoints", MAX_SLICE_ENDPOINTS):
        e = r.mapping(item, path)
        addresses = r.sequence(e.get("addresses"), f"{path}.addresses")
        if not addresses:
            r.fail(f"{path}.addresses", "an endpoint needs at least one address")
        where = f"{path}.addresses[0]"
        first = (
            r.string(addresses[0], where) if address_type == "FQDN" else r.ip(addresses[0], where)
        )
        conditions = r.mapping(e.get("conditions"), f"{path}.conditions")
        flags = {}
        for flag, default in (("ready", True), ("serving", True), ("terminating", False)):
            value = conditions.get(flag)
            if value is not None and not isinstance(value, bool):
                r.fail(f"{path}.conditions.{flag}", f"must be true or false, not {value!r}")
            flags[flag] = default if value is None else value
        ref = r.mapping(e.get("targetRef"), f"{path}.targetRef")
        pod = None
        if ref.get("kind") == "Pod" and ref.get("name"):
            namespace = ref.get("namespace") or meta.get("namespace", "default")
            pod = (
                r.label_name(namespace, f"{path}.targetRef.namespace"),
                r.name(ref["name"], f"{path}.targetRef.name"),
            )
        node = e.get("nodeName")
        endpoints.append(
            SliceEndpoint(
                address=first,
                **flags,
                pod=pod,
                node_name=r.name(node, f"{path}.nodeName") if node else "",
                zone=r.string(e.get("zone"), f"{path}.zone", ""),
            )
        )
    return EndpointSlice(
        **meta, address_type=address_type, endpoints=tuple(endpoints), ports=tuple(ports)
    )


def read_node(r: Reader, doc: Mapping[str, object]) -> Node:
    meta = read_meta(r, doc, namespaced=False)
    status = r.mapping(doc.get("status"), "status")
    internal_ip = None
    for item, path in r.items(status.get("addresses"), "status.addresses", 100):
        address = r.mapping(item, path)
        if address.get("type") == "InternalIP" and internal_ip is None:
            internal_ip = r.ip(address.get("address"), f"{path}.address")
    return Node(**meta, internal_ip=internal_ip)
