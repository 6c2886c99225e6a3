"""The CustomResourceDefinitions of ambit's own kinds, from one Python description:
``ambit install --crds``.

ambit owns the kinds of :data:`k8s.manifests.KINDS` whose first API version is in one
of its own groups (``*.ambit.io``): AuthorizationPolicy, PeerAuthentication and
RequestAuthentication in ``security.ambit.io/v1`` (Istio's schema), and the route filters
FaultInjection and LocalRateLimit in ``networking.ambit.io/v1alpha1``. Each CRD takes its
names (plural, short names, scope) from ``KINDS`` and its structural OpenAPI v3 schema
from :data:`SPECS` below, which spells out the fields :mod:`k8s.policy_manifests` and
:mod:`k8s.traffic_manifests` read. Nothing is open
(``x-kubernetes-preserve-unknown-fields`` nowhere): the reader refuses unknown fields,
so the server must keep (or refuse) everything a user writes, never prune a typo'd
``principal:`` silently. What a schema can say cheaply, it says (enums, sizes,
patterns, and CEL rules for fields that exclude each other); the rest of the reader's
checks stay the control plane's, reported in the object's status.

Every CRD has the ``status`` subresource (conditions as Kubernetes writes them) and
printer columns. Gateway API's CRDs are not here: ambit ships no copies of another
project's CRDs (``ambit install --gateway-api`` says how to install them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from k8s.manifests import KINDS, KindInfo
from mesh.model import TARGET_KINDS

Schema = dict[str, Any]

OWN_GROUP_SUFFIX: Final = ".ambit.io"
LABELS: Final = {"app.kubernetes.io/part-of": "ambit"}


# --- schema builders ---------------------------------------------------------------------


def string(*, max_length: int | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "string"}
    if max_length is not None:
        out["maxLength"] = max_length
    return out | extra


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def array(items: Schema, *, max_items: int | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "array", "items": items}
    if max_items is not None:
        out["maxItems"] = max_items
    return out | extra


def strings(*, max_items: int = 4096, max_length: int = 1024) -> Schema:
    return array(string(max_length=max_length, minLength=1), max_items=max_items)


def obj(
    properties: Mapping[str, Schema],
    *,
    required: Sequence[str] = (),
    rules: Sequence[tuple[str, str]] = (),
    description: str = "",
) -> Schema:
    """An object of exactly these properties; ``rules`` are CEL (rule, message) pairs."""
    out: Schema = {"type": "object", "properties": dict(properties)}
    if description:
        out["description"] = description
    if required:
        out["required"] = list(required)
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    return out


def string_map(*, max_properties: int = 256) -> Schema:
    return {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 63},
        "maxProperties": max_properties,
    }


PORT: Final[Schema] = {"x-kubernetes-int-or-string": True}  # Istio writes "8080"; 8080 reads too


# --- the kinds' fields, as k8s.policy_manifests reads them ---------------------------------

SELECTOR: Final = obj(
    {"matchLabels": string_map()},
    description="The workloads it applies to; omitted: every workload of the namespace.",
)
TARGET_REF: Final = obj(
    {
        "group": string(max_length=253),
        "kind": enum(*sorted({kind for _, kind in TARGET_KINDS})),
        "name": string(max_length=253, minLength=1),
        "namespace": string(max_length=0, description="Must be left out: a policy binds"
                            " only in its own namespace."),
    },
    required=("kind", "name"),
)  # fmt: skip
TARGETING_RULES: Final = (
    ("!(has(self.targetRef) && has(self.targetRefs))",
     "set targetRefs or the older targetRef, not both"),
    ("!(has(self.selector) && (has(self.targetRef) || has(self.targetRefs)))",
     "set selector or targetRefs, not both: a selector picks workloads for ztunnel,"
     " targetRefs binds the policy to waypoints"),
)  # fmt: skip
TARGETING: Final[Mapping[str, Schema]] = {
    "selector": SELECTOR,
    "targetRef": TARGET_REF,
    "targetRefs": array(TARGET_REF, max_items=16),
}
_SOURCE_FIELDS: Final = ("principals", "requestPrincipals", "namespaces", "ipBlocks",
                         "remoteIpBlocks")  # fmt: skip
SOURCE: Final = obj(
    {f: strings() for name in _SOURCE_FIELDS for f in (name, "not" + name[0].upper() + name[1:])}
) | {"minProperties": 1}
OPERATION: Final = obj(
    {
        "ports": array(PORT, max_items=4096),
        "notPorts": array(PORT, max_items=4096),
        **{f: strings() for f in ("hosts", "notHosts", "methods", "notMethods", "paths",
                                  "notPaths")},
    }
) | {"minProperties": 1}  # fmt: skip
CONDITION: Final = obj(
    {"key": string(max_length=1024, minLength=1), "values": strings(), "notValues": strings()},
    required=("key",),
    rules=(("has(self.values) || has(self.notValues)", "set values, notValues or both"),),
)
RULE: Final = obj(
    {
        "from": array(obj({"source": SOURCE}, required=("source",)), max_items=512),
        "to": array(obj({"operation": OPERATION}, required=("operation",)), max_items=512),
        "when": array(CONDITION, max_items=512),
    }
)
AUTHORIZATION_POLICY: Final = obj(
    {
        **TARGETING,
        "action": enum("ALLOW", "DENY", "AUDIT", "CUSTOM"),
        "provider": obj({"name": string(max_length=253)}, required=("name",)),
        "rules": array(RULE, max_items=512),
    },
    rules=(
        *TARGETING_RULES,
        ("!has(self.provider) || (has(self.action) && self.action == 'CUSTOM')",
         "provider is only used with action CUSTOM"),
    ),
)  # fmt: skip
MTLS_MODE: Final = enum("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
PEER_AUTHENTICATION: Final = obj(
    {
        "selector": SELECTOR,
        "mtls": obj({"mode": MTLS_MODE}),
        # Kept, not pruned: ambit reports it as not supported yet rather than ignore it.
        "portLevelMtls": {
            "type": "object",
            "additionalProperties": obj({"mode": MTLS_MODE}),
            "maxProperties": 64,
        },
    }
)
JWT_RULE: Final = obj(
    {
        "issuer": string(max_length=1024, minLength=1),
        "audiences": strings(),
        "jwksUri": string(max_length=2048, pattern="^$|^https?://"),
        "jwks": string(max_length=1 << 20),
        "fromHeaders": array(
            obj({"name": string(max_length=256, minLength=1), "prefix": string(max_length=256)},
                required=("name",)),
            max_items=64,
        ),
        "fromParams": strings(max_items=64),
        "fromCookies": strings(max_items=64),
        "outputPayloadToHeader": string(max_length=256),
        "outputClaimToHeaders": array(
            obj({"header": string(max_length=256, pattern="^[-_A-Za-z0-9]+$"),
                 "claim": string(max_length=256, minLength=1)},
                required=("header", "claim")),
            max_items=64,
        ),
        "forwardOriginalToken": {"type": "boolean"},
        "timeout": string(max_length=64, pattern="^(([0-9]+(\\.[0-9]+)?)(h|m|s|ms|us|µs|ns))+$"),
    },
    required=("issuer",),
)  # fmt: skip
REQUEST_AUTHENTICATION: Final = obj(
    {**TARGETING, "jwtRules": array(JWT_RULE, max_items=4096)},
    rules=TARGETING_RULES,
)

# ambit's route filters (k8s.traffic_manifests), reached from an ExtensionRef filter.
ISTIO_DURATION: Final = string(
    max_length=64, pattern="^(([0-9]+(\\.[0-9]+)?)(h|m|s|ms|us|µs|ns))+$"
)
PERCENTAGE: Final = obj(
    {"value": {"type": "number", "minimum": 0, "maximum": 100}},
    description="The share of requests, 0-100; omitted: 100.",
)
FAULT_INJECTION: Final = obj(
    {
        "delay": obj({"fixedDelay": ISTIO_DURATION, "percentage": PERCENTAGE},
                     required=("fixedDelay",)),
        "abort": obj(
            {"httpStatus": {"type": "integer", "minimum": 200, "maximum": 599},
             "grpcStatus": {"x-kubernetes-int-or-string": True,
                            "description": "A gRPC code's name (UNAVAILABLE) or number 0-16."},
             "percentage": PERCENTAGE},
            rules=(("has(self.httpStatus) != has(self.grpcStatus)",
                    "set httpStatus or grpcStatus (one of them)"),),
        ),
    },
    rules=(("has(self.delay) || has(self.abort)", "set delay, abort or both"),),
    description="As Istio's VirtualService fault: delay and/or abort a share of requests.",
)  # fmt: skip
RATE: Final = {"type": "integer", "minimum": 1, "maximum": 1_000_000_000}
LOCAL_RATE_LIMIT: Final = obj(
    {
        "requests": RATE,
        "unit": enum("Second", "Minute", "Hour"),
        "burst": RATE,
        "perClient": {"type": "boolean"},
    },
    required=("requests",),
    description="A token bucket per route rule (and caller identity, with perClient):"
    " requests per unit, up to burst at once (default: requests).",
)

CONDITIONS: Final = array(
    obj(
        {
            "type": string(max_length=316, minLength=1),
            "status": enum("True", "False", "Unknown"),
            "reason": string(max_length=1024),
            "message": string(max_length=32768),
            "lastTransitionTime": string(format="date-time"),
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
        required=("type", "status"),
    ),
    max_items=32,
    **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
)
STATUS: Final = obj(
    {"conditions": CONDITIONS, "observedGeneration": {"type": "integer", "format": "int64"}},
    description="What the control plane says of the object: whether it takes effect as"
    " written (ambit.io/ZtunnelAccepted, ambit.io/WaypointAccepted).",
)

AGE_COLUMN: Final = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
SPECS: Final[Mapping[str, tuple[Schema, tuple[dict[str, str], ...]]]] = {
    "AuthorizationPolicy": (
        AUTHORIZATION_POLICY,
        ({"name": "Action", "type": "string", "jsonPath": ".spec.action",
          "description": "ALLOW (the default), DENY, AUDIT or CUSTOM"},),
    ),
    "PeerAuthentication": (
        PEER_AUTHENTICATION,
        ({"name": "Mode", "type": "string", "jsonPath": ".spec.mtls.mode",
          "description": "The workloads' mutual TLS mode"},),
    ),
    "RequestAuthentication": (REQUEST_AUTHENTICATION, ()),
    "FaultInjection": (
        FAULT_INJECTION,
        ({"name": "Delay", "type": "string", "jsonPath": ".spec.delay.fixedDelay"},
         {"name": "Abort", "type": "string", "jsonPath": ".spec.abort.httpStatus"}),
    ),
    "LocalRateLimit": (
        LOCAL_RATE_LIMIT,
        ({"name": "Requests", "type": "integer", "jsonPath": ".spec.requests"},
         {"name": "Unit", "type": "string", "jsonPath": ".spec.unit"}),
    ),
}  # fmt: skip
"""Each owned kind's spec schema and its printer columns (Age is added to all)."""


# --- the CRDs ------------------------------------------------------------------------------


def owned_kinds() -> tuple[KindInfo, ...]:
    """The kinds whose first API version is in one of ambit's groups."""
    return tuple(k for k in KINDS if k.group.endswith(OWN_GROUP_SUFFIX))


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one owned kind, served and stored at its version."""
    spec_schema, columns = SPECS[info.kind]
    version = info.api_versions[0].rpartition("/")[2]
    group_word = info.group.removesuffix(OWN_GROUP_SUFFIX)
    names: dict[str, Any] = {
        "kind": info.kind,
        "listKind": f"{info.kind}List",
        "plural": info.plural,
        "singular": info.kind.lower(),
        "categories": ["ambit-io", f"{group_word}-ambit-io"],
    }
    if info.short_names:
        names["shortNames"] = list(info.short_names)
    schema = obj(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": STATUS,
        },
        description=f"ambit's {info.kind}, in {info.group}"
        + (": Istio's schema." if info.group.startswith("security.") else "."),
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.resource, "labels": dict(LABELS)},
        "spec": {
            "group": info.group,
            "names": names,
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [*columns, AGE_COLUMN],
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Every owned kind's CRD, in :data:`KINDS` order."""
    return [crd(info) for info in owned_kinds()]
