"""Small builders for Kubernetes objects (the input of translation), so a test states
only what it is about."""

from __future__ import annotations

from k8s import manifests as m
from mesh.model_l7 import Listener

AMBIENT = (("ambit.io/dataplane-mode", "ambient"),)


def pod(
    name: str,
    namespace: str = "default",
    *,
    ip: str | None = "10.0.0.1",
    labels: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
    created: str = "",
    **fields: object,
) -> m.Pod:
    """A pod with one container; its labels default to ``app: <name>``."""
    container = m.Container(
        name="app",
        ports=tuple(m.ContainerPort(port=p, name=n) for n, p in (ports or {}).items()),
    )
    return m.Pod(
        name=name,
        namespace=namespace,
        labels=tuple((labels if labels is not None else {"app": name}).items()),
        containers=(container,),
        pod_ip=ip,
        creation_timestamp=created,
        **fields,  # type: ignore[arg-type]
    )


def svc(
    name: str,
    namespace: str = "default",
    *,
    selector: dict[str, str] | None = None,
    ports: tuple[m.ServicePortSpec, ...] = (m.ServicePortSpec(port=80, target_port=8080),),
    cluster_ip: str | None = "10.96.0.1",
    created: str = "",
    labels: dict[str, str] | None = None,
) -> m.Service:
    """A Service on port 80 to 8080; its selector defaults to ``app: <name>``."""
    sel = tuple((selector if selector is not None else {"app": name}).items()) or None
    return m.Service(
        name=name,
        namespace=namespace,
        labels=tuple((labels or {}).items()),
        selector=sel,
        ports=ports,
        cluster_ip=cluster_ip,
        creation_timestamp=created,
    )


def ns(name: str, *, ambient: bool = True, labels: dict[str, str] | None = None) -> m.Namespace:
    return m.Namespace(
        name=name, labels=(AMBIENT if ambient else ()) + tuple((labels or {}).items())
    )


def gateway(
    name: str = "waypoint",
    namespace: str = "default",
    *,
    gateway_class: str = "istio-waypoint",
    labels: dict[str, str] | None = None,
) -> m.Gateway:
    """A Gateway with Istio's waypoint listener (HBONE on 15008); a waypoint by default."""
    return m.Gateway(
        name=name,
        namespace=namespace,
        labels=tuple((labels or {}).items()),
        gateway_class=gateway_class,
        listeners=(Listener("mesh", 15008, "HBONE"),),
    )


def endpoint_slice(
    name: str,
    namespace: str,
    service: str,
    endpoints: tuple[m.SliceEndpoint, ...] = (),
    *,
    address_type: str = "IPv4",
    ports: tuple[m.SlicePort, ...] = (m.SlicePort(port=8080),),
) -> m.EndpointSlice:
    """An EndpointSlice of ``service`` (its ``kubernetes.io/service-name`` label)."""
    return m.EndpointSlice(
        name=name,
        namespace=namespace,
        labels=(("kubernetes.io/service-name", service),),
        address_type=address_type,
        endpoints=endpoints,
        ports=ports,
    )


def node(name: str, *, zone: str = "", region: str = "") -> m.Node:
    """A Node with the topology labels given."""
    labels = (("topology.kubernetes.io/region", region), ("topology.kubernetes.io/zone", zone))
    return m.Node(name=name, labels=tuple((k, v) for k, v in labels if v))
