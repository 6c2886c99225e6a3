"""Objects of ambit's own kinds that its CRDs must take, and ones they must refuse:
the same cases go to the real API server (``tests/kube/test_install_crds.py``) and to
ambit's reader (``tests/unit/test_crds.py``), so the two agree on them."""

from __future__ import annotations

from typing import Any

API_VERSION = "security.ambit.io/v1"
FILTER_API_VERSION = "networking.ambit.io/v1alpha1"  # FaultInjection, LocalRateLimit

Obj = dict[str, Any]


def api_version(kind: str) -> str:
    return FILTER_API_VERSION if kind in ("FaultInjection", "LocalRateLimit") else API_VERSION


def policy(kind: str, name: str, namespace: str, spec: Obj) -> Obj:
    return {
        "apiVersion": api_version(kind),
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# kind -> (name, spec) the server stores and ambit reads.
VALID: dict[str, list[tuple[str, Obj]]] = {
    "AuthorizationPolicy": [
        (
            "allow-frontend",
            {
                "selector": {"matchLabels": {"app": "web"}},
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}],
                        "to": [{"operation": {"ports": ["8080", 9090], "methods": ["GET"]}}],
                        "when": [{"key": "request.headers[x-team]", "values": ["a"]}],
                    }
                ],
            },
        ),
        (
            "waypoint-custom",
            {
                "targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}],
                "action": "CUSTOM",
                "provider": {"name": "ext-authz"},
                "rules": [{}],
            },
        ),
    ],
    "PeerAuthentication": [
        ("strict", {"mtls": {"mode": "STRICT"}}),
        ("web-permissive", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {}}),
    ],
    "RequestAuthentication": [
        (
            "jwt",
            {
                "targetRefs": [
                    {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
                ],
                "jwtRules": [
                    {
                        "issuer": "https://issuer.example",
                        "audiences": ["shop"],
                        "jwksUri": "https://issuer.example/jwks.json",
                        "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
                        "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
                        "forwardOriginalToken": True,
                        "timeout": "1.5s",
                    }
                ],
            },
        ),
    ],
}
VALID |= {
    "FaultInjection": [
        ("delay-half", {"delay": {"fixedDelay": "200ms", "percentage": {"value": 50}}}),
        ("abort-grpc", {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 10.5}}}),
        ("both", {"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 503}}),
    ],
    "LocalRateLimit": [
        ("per-second", {"requests": 100}),
        ("per-client", {"requests": 10, "unit": "Minute", "burst": 20, "perClient": True}),
    ],
}

# kind -> (name, spec, a word the server's refusal names) that both refuse.
INVALID: dict[str, list[tuple[str, Obj, str]]] = {
    "AuthorizationPolicy": [
        ("bad-action", {"action": "PERMIT"}, "spec.action"),
        (
            "selector-and-targets",
            {
                "selector": {"matchLabels": {"app": "web"}},
                "targetRefs": [{"kind": "Service", "name": "web"}],
            },
            "set selector or targetRefs, not both",
        ),
        ("empty-source", {"rules": [{"from": [{"source": {}}]}]}, "source"),
        (
            "target-elsewhere",
            {"targetRefs": [{"kind": "Service", "name": "web", "namespace": "other"}]},
            "namespace",
        ),
        ("bad-target-kind", {"targetRefs": [{"kind": "Pod", "name": "web"}]}, "kind"),
        ("provider-not-custom", {"action": "DENY", "provider": {"name": "x"}}, "CUSTOM"),
        ("when-without-values", {"rules": [{"when": [{"key": "source.ip"}]}]}, "notValues"),
    ],
    "PeerAuthentication": [
        ("bad-mode", {"mtls": {"mode": "ON"}}, "spec.mtls.mode"),
    ],
    "RequestAuthentication": [
        ("no-issuer", {"jwtRules": [{"audiences": ["a"]}]}, "issuer"),
        ("bad-timeout", {"jwtRules": [{"issuer": "i", "timeout": "soon"}]}, "timeout"),
        (
            "bad-jwks-uri",
            {"jwtRules": [{"issuer": "i", "jwksUri": "ftp://keys"}]},
            "jwksUri",
        ),
    ],
}
INVALID |= {
    "FaultInjection": [
        ("nothing", {}, "set delay, abort or both"),
        ("both-statuses", {"abort": {"httpStatus": 503, "grpcStatus": 14}}, "one of them"),
        ("bad-status", {"abort": {"httpStatus": 99}}, "httpStatus"),
        ("no-fixed-delay", {"delay": {"percentage": {"value": 5}}}, "fixedDelay"),
        ("over-100", {"abort": {"httpStatus": 503, "percentage": {"value": 101}}}, "value"),
        ("bad-delay", {"delay": {"fixedDelay": "soon"}}, "fixedDelay"),
    ],
    "LocalRateLimit": [
        ("no-requests", {"unit": "Second"}, "requests"),
        ("zero", {"requests": 0}, "requests"),
        ("bad-unit", {"requests": 5, "unit": "Day"}, "unit"),
        ("bad-burst", {"requests": 5, "burst": -1}, "burst"),
    ],
}

# A field the schema does not have: kept by nobody, refused under strict field validation
# (kubectl's default), never pruned without a word.
TYPO: Obj = {"rules": [{"from": [{"source": {"principal": ["cluster.local/ns/a/sa/b"]}}]}]}
