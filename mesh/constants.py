"""Ports, label keys and other names every ambit process agrees on (Istio's, on purpose)."""

from typing import Final

DEFAULT_TRUST_DOMAIN: Final = "cluster.local"  # SPIFFE ids: spiffe://<trust domain>/ns/...
# DNS names of Services: <name>.<namespace>.svc.<cluster domain>. A separate setting from the
# trust domain (Kubernetes' clusterDomain), though both default to the same words.
DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"

# Data-path ports inside each pod network namespace.
OUTBOUND_CAPTURE_PORT: Final = 15001
INBOUND_PLAINTEXT_PORT: Final = 15006
HBONE_PORT: Final = 15008
# ztunnel's own ports in a pod: never a destination (dialling one would reach ztunnel).
CAPTURE_PORTS: Final = frozenset({OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})

# Proxy management ports.
ADMIN_PORT: Final = 15000
METRICS_PORT: Final = 15020
READINESS_PORT: Final = 15021

# Control plane.
CONTROL_PLANE_PORT: Final = 15012
CONTROL_PLANE_METRICS_PORT: Final = 15014
# ambit tap's API (HTTPS, a bearer token): live events from the proxies, through the
# control plane; the proxies' own admin ports are never exposed for it.
TAP_PORT: Final = 15016

# ztunnel marks its own sockets so the pod's redirect rules skip them.
PROXY_SOCKET_MARK: Final = 0x539

# Labels.
# On a Namespace or Pod: "ambient" puts it in the mesh, "none" (on a Pod) keeps it out.
# Istio's label means the same; where both are set, ambit's counts.
LABEL_DATAPLANE_MODE: Final = "ambit.io/dataplane-mode"
ISTIO_LABEL_DATAPLANE_MODE: Final = "istio.io/dataplane-mode"
# On a Namespace, Service or Pod: the waypoint (a Gateway's name, in the object's namespace
# unless the -namespace label names another) its traffic goes through; "none" opts out of
# the namespace's. Istio's labels mean the same; where both are set, ambit's count.
LABEL_USE_WAYPOINT: Final = "ambit.io/use-waypoint"
LABEL_USE_WAYPOINT_NAMESPACE: Final = "ambit.io/use-waypoint-namespace"
ISTIO_LABEL_USE_WAYPOINT: Final = "istio.io/use-waypoint"
ISTIO_LABEL_USE_WAYPOINT_NAMESPACE: Final = "istio.io/use-waypoint-namespace"
# On a waypoint's Gateway: which traffic it takes (service, workload, all or none).
LABEL_WAYPOINT_FOR: Final = "ambit.io/waypoint-for"
ISTIO_LABEL_WAYPOINT_FOR: Final = "istio.io/waypoint-for"
# The GatewayClass names that make a Gateway a waypoint; ambit's control plane creates its
# own class, for its controller, and deploys the waypoints of that class on a cluster.
WAYPOINT_CLASS: Final = "ambit-waypoint"
WAYPOINT_CLASSES: Final = ("istio-waypoint", WAYPOINT_CLASS)
WAYPOINT_CONTROLLER: Final = "ambit.io/mesh-controller"  # its spec.controllerName
# On a waypoint's pods and Service: the Gateway they serve (Gateway API's own label). A pod
# with it, naming a waypoint Gateway of its namespace, speaks HBONE itself (native tunnel).
LABEL_GATEWAY_NAME: Final = "gateway.networking.k8s.io/gateway-name"
# The controller ambit writes route status as (a route's status.parents[].controllerName).
CONTROLLER_NAME: Final = "ambit.io/mesh-controller"
# On objects a controller of ambit made (a waypoint's ServiceAccount, Service and Pod).
LABEL_MANAGED_BY: Final = "ambit.io/managed-by"

# Status conditions the control plane writes on objects: on an AuthorizationPolicy, whether
# ztunnel enforces it as written (k8s.translate.ztunnel_acceptance says how).
CONDITION_ZTUNNEL_ACCEPTED: Final = "ambit.io/ZtunnelAccepted"
CONDITION_WAYPOINT_ACCEPTED: Final = "ambit.io/WaypointAccepted"
CONDITION_ACCEPTED: Final = "ambit.io/Accepted"  # Pods and Services left out by a conflict
CONDITION_WAYPOINT_BOUND: Final = "ambit.io/WaypointBound"  # Services: through their waypoint?

# Identity of the control plane / CA service.
SYSTEM_NAMESPACE: Final = "ambit-system"
CONTROL_PLANE_SERVICE_ACCOUNT: Final = "ambit-controlplane"
ZTUNNEL_SERVICE_ACCOUNT: Final = "ztunnel"
# The service account of a namespace's default waypoint (Istio's, named after its Gateway).
WAYPOINT_SERVICE_ACCOUNT: Final = "waypoint"

# The config stream (HBONE, mTLS): its own port because the CA on 15012 takes
# callers without a certificate yet.
CONFIG_STREAM_PORT: Final = 15010

# Workload certificates.
DEFAULT_CERT_TTL_SECONDS: Final = 24 * 3600
