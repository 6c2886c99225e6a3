"""``ambit check``'s pure parts: the report as text and JSON, the exit code, the
certificate dates, the server version, and which Istio kinds ambit ignores."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509

from ambit.cli import build_parser
from k8s.check import report
from k8s.check.base import Result
from k8s.check.certs import certificate_dates
from k8s.check.cluster import in_both_meshes, parse_version
from k8s.unsupported import Found, IstioKind, unsupported_kinds
from tests.pki import make_root

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
RESULTS = [
    Result("kubernetes-api", "can query the Kubernetes API"),
    Result(
        "ambit-node", "the node side is ready", "warn", "no node side", "a later release\nadds it"
    ),
    Result("ambit-node", "something else", "fail", "broken", ""),
    Result("istio", "Istio is not installed", "ok", "a detail nobody sees in text"),
]


def test_text_groups_checks_and_puts_message_and_hint_under_a_non_ok_line() -> None:
    assert report.text(RESULTS).splitlines() == [
        "kubernetes-api",
        "--------------",
        "\u221a can query the Kubernetes API",
        "",
        "ambit-node",
        "----------",
        "\u203c the node side is ready",
        "    no node side",
        "    hint: a later release",
        "          adds it",
        "\u00d7 something else",
        "    broken",
        "",
        "istio",
        "-----",
        "\u221a Istio is not installed",
        "",
        "Status check results are \u00d7 (4 checks: 1 failed, 1 warnings)",
    ]


def test_warnings_alone_exit_0_a_failure_exits_1() -> None:
    assert report.exit_code(RESULTS[:2]) == 0
    assert report.text(RESULTS[:2]).endswith(
        "results are \u221a (2 checks: 0 failed, 1 warnings)\n"
    )
    assert report.exit_code(RESULTS) == 1
    assert report.exit_code([]) == 0


def test_json_has_a_category_per_group() -> None:
    document = json.loads(report.to_json(RESULTS))
    assert document["success"] is False
    assert [c["categoryName"] for c in document["categories"]] == [
        "kubernetes-api", "ambit-node", "istio"
    ]  # fmt: skip
    assert document["categories"][1]["checks"][0] == {
        "description": "the node side is ready", "result": "warning",
        "message": "no node side", "hint": "a later release\nadds it",
    }  # fmt: skip


def test_usage_errors_exit_2() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["check", "-o", "yaml"])
    assert exited.value.code == 2
    args = parser.parse_args(["check", "--pre", "-n", "mesh"])
    assert (args.pre, args.namespace, args.output) == (True, "mesh", "text")


def _cert(days_left: float, *, started_days_ago: float = 1) -> tuple[str, x509.Certificate]:
    root = make_root()
    _, cert = root.issue_raw(
        [], not_before=NOW - dt.timedelta(days=started_days_ago),
        not_after=NOW + dt.timedelta(days=days_left),
    )  # fmt: skip
    return "ca-cert.pem", cert


def test_certificate_dates() -> None:
    month = dt.timedelta(days=30)
    assert certificate_dates([_cert(400)], NOW, month, "h").status == "ok"
    near = certificate_dates([_cert(12.5)], NOW, month, "renew it")
    assert (near.status, near.hint) == ("warn", "renew it")
    assert near.message == ("ca-cert.pem (no subject) expires on 2026-12-19 00:00 UTC, in 12 days")
    gone = certificate_dates([_cert(400), _cert(-1)], NOW, month, "h")
    assert gone.status == "fail"
    assert gone.message == "ca-cert.pem (no subject) expired on 2026-12-05 12:00 UTC"
    early = certificate_dates([_cert(400, started_days_ago=-2)], NOW, month, "h")
    assert early.status == "fail"
    assert "is not valid before 2026-12-08 12:00 UTC" in early.message
    assert certificate_dates([], NOW, month, "h").status == "fail"


@pytest.mark.parametrize(
    ("info", "version"),
    [
        ({"major": "1", "minor": "36", "gitVersion": "v1.36.3"}, (1, 36)),
        ({"major": "1", "minor": "30+", "gitVersion": "v1.30.2-gke.1"}, (1, 30)),
        ({"gitVersion": "v1.28.0"}, (1, 28)),
        ({}, None),
    ],
)
def test_parse_version(info: dict[str, str], version: tuple[int, int] | None) -> None:
    assert parse_version(info) == version


def _crd(
    group: str, kind: str, plural: str, versions: list[tuple[str, bool, bool]]
) -> dict[str, object]:
    return {
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural},
            "versions": [{"name": n, "served": s, "storage": st} for n, s, st in versions],
        },
    }  # fmt: skip


def test_unsupported_kinds_are_istios_that_ambit_does_not_read() -> None:
    both = [("v1alpha3", True, False), ("v1", True, True)]
    crds = [
        _crd("telemetry.istio.io", "Telemetry", "telemetries", both),
        _crd("networking.istio.io", "ServiceEntry", "serviceentries", both),
        _crd("networking.istio.io", "VirtualService", "virtualservices", both),
        _crd("security.istio.io", "AuthorizationPolicy", "authorizationpolicies", both),
        _crd("security.istio.io", "PeerAuthentication", "peerauthentications", both),
        _crd("gateway.networking.k8s.io", "HTTPRoute", "httproutes", both),
        _crd("example.com", "Widget", "widgets", both),
        _crd("install.istio.io", "IstioOperator", "istiooperators", both),  # no traffic
        _crd("networking.istio.io", "Sidecar", "sidecars", [("v1", False, True)]),  # not served
    ]
    assert unsupported_kinds(crds) == [
        IstioKind("networking.istio.io", "VirtualService", "virtualservices", "v1", True),
        IstioKind("networking.istio.io", "ServiceEntry", "serviceentries", "v1", True),
        IstioKind("telemetry.istio.io", "Telemetry", "telemetries", "v1", True),
    ]


def test_found_shows_a_count_and_some_names() -> None:
    kind = IstioKind("networking.istio.io", "VirtualService", "virtualservices", "v1", True)
    assert Found(kind, ("a/x", "b/y")).shown() == "2 (a/x, b/y)"
    many = Found(kind, tuple(f"a/{i}" for i in range(7)))
    assert many.shown() == "7 (a/0, a/1, a/2, a/3, a/4, and 2 more)"


def _ns(name: str, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels}}


def test_in_both_meshes_means_ambit_and_istio_would_both_enroll_it() -> None:
    namespaces = [
        _ns("alias", **{"istio.io/dataplane-mode": "ambient"}),  # ambit reads Istio's label
        _ns(
            "kept-out", **{"istio.io/dataplane-mode": "ambient", "ambit.io/dataplane-mode": "none"}
        ),
        _ns("sidecars", **{"istio-injection": "enabled", "ambit.io/dataplane-mode": "ambient"}),
        _ns("revision", **{"istio.io/rev": "canary", "ambit.io/dataplane-mode": "ambient"}),
        _ns("istio-only", **{"istio-injection": "enabled"}),
        _ns("ambit-only", **{"ambit.io/dataplane-mode": "ambient"}),
        _ns("off", **{"istio-injection": "disabled", "ambit.io/dataplane-mode": "ambient"}),
    ]
    assert in_both_meshes(namespaces) == [
        "alias (istio.io/dataplane-mode=ambient)",
        "revision (istio.io/rev=canary)",
        "sidecars (istio-injection=enabled)",
    ]
