"""Istio's response flags, one enum for every proxy's telemetry: the metrics'
``response_flags`` label and the access log's ``response_flags`` key.

ztunnel reports ``DENY`` (policy or STRICT refused the connection) and ``CONNECT`` (it could
not connect), as Istio's ztunnel does (:mod:`mesh.reason` picks one per reason). The
waypoint reports Envoy's short flags for what it decides on a request; a request that was
answered normally, or refused by AuthorizationPolicy or RequestAuthentication, has none
(``-``), as in Envoy, whose response code details (``rbac_access_denied_matched_policy[...]``,
``jwt_authn_access_denied{...}``) say why instead.
"""

from __future__ import annotations

import enum


class ResponseFlag(enum.Enum):
    NONE = "-"
    # Istio's ztunnel
    DENY = "DENY"
    CONNECT = "CONNECT"
    # Envoy's, the ones a waypoint sets
    NO_ROUTE_FOUND = "NR"
    NO_CLUSTER_FOUND = "NC"
    NO_HEALTHY_UPSTREAM = "UH"
    UPSTREAM_CONNECTION_FAILURE = "UF"
    UPSTREAM_CONNECTION_TERMINATION = "UC"
    UPSTREAM_REMOTE_RESET = "UR"
    UPSTREAM_REQUEST_TIMEOUT = "UT"
    UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
    UPSTREAM_OVERFLOW = "UO"
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"
    STREAM_IDLE_TIMEOUT = "SI"
    DURATION_TIMEOUT = "DT"
    LOCAL_RESET = "LR"
    INVALID_HEADERS = "IH"
    FAULT_INJECTED = "FI"
    DELAY_INJECTED = "DI"
    RATE_LIMITED = "RL"

    def __str__(self) -> str:
        return self.value
