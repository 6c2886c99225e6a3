"""``ambit install --crds`` against the real API server: every CRD applies (server-side,
as the docs say), becomes Established with its names accepted, and the server's own
validation takes the valid objects of each kind and refuses the invalid ones, the same
cases ambit's reader is tested on (``tests/crd_cases.py``)."""

from __future__ import annotations

import pytest
import trio

from ambit.cli import build_parser
from k8s import crds
from tests import crd_cases
from tests.kube.client import KubeAdmin, KubeError
from tests.kube.installing import ambit_crds


def main(argv: list[str]) -> int:
    """The command without ``ambit.cli.main``'s logging set-up (it would bind structlog to
    this test's captured stderr)."""
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


pytestmark = pytest.mark.kube

__all__ = ["ambit_crds"]  # the fixture, used here


async def test_every_owned_kind_has_an_established_crd(
    kube_admin: KubeAdmin, ambit_crds: list[str]
) -> None:
    assert sorted(ambit_crds) == [
        "authorizationpolicies.security.ambit.io",
        "faultinjections.networking.ambit.io",
        "localratelimits.networking.ambit.io",
        "peerauthentications.security.ambit.io",
        "requestauthentications.security.ambit.io",
    ]
    with trio.fail_after(10):
        listing = await kube_admin.request("GET", "/apis/security.ambit.io/v1")
    served = {r["name"]: r for r in listing["resources"]}
    assert served["authorizationpolicies"]["shortNames"] == ["ap"]
    assert served["authorizationpolicies/status"]["verbs"]
    assert "ambit-io" in served["peerauthentications"]["categories"]
    with trio.fail_after(10):
        listing = await kube_admin.request("GET", "/apis/networking.ambit.io/v1alpha1")
    served = {r["name"]: r for r in listing["resources"]}
    assert served["faultinjections"]["shortNames"] == ["fi"]
    assert served["localratelimits/status"]["verbs"]


def test_the_cli_prints_what_is_applied(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["install", "--crds"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == crds.crds()


@pytest.mark.parametrize(
    ("kind", "name", "spec"),
    [(kind, name, spec) for kind, cases in crd_cases.VALID.items() for name, spec in cases],
)
async def test_the_server_stores_a_valid_object(
    kube_admin: KubeAdmin,
    ambit_crds: list[str],
    kube_ns: str,
    kind: str,
    name: str,
    spec: crd_cases.Obj,
) -> None:
    doc = crd_cases.policy(kind, name, kube_ns, spec)
    with trio.fail_after(20):
        await kube_admin.create(doc, dry_run=True, field_validation="Strict")
        created = await kube_admin.create(doc, field_validation="Strict")
        # Nothing pruned: the server keeps the spec exactly as written.
        assert created["spec"] == spec
        # The control plane's status write goes through the status subresource.
        condition = {
            "type": "ambit.io/ZtunnelAccepted",
            "status": "True",
            "reason": "Accepted",
            "message": "",
            "lastTransitionTime": "2026-12-06T00:00:00Z",
            "observedGeneration": 1,
        }
        patched = await kube_admin.patch(
            crd_cases.api_version(kind), kind, name, {"status": {"conditions": [condition]}},
            kube_ns, subresource="status",
        )  # fmt: skip
    assert patched["status"]["conditions"] == [condition]
    assert patched["spec"] == spec


@pytest.mark.parametrize(
    ("kind", "name", "spec", "named"),
    [(kind, *case) for kind, cases in crd_cases.INVALID.items() for case in cases],
)
async def test_the_server_refuses_an_invalid_object(
    kube_admin: KubeAdmin,
    ambit_crds: list[str],
    kube_ns: str,
    kind: str,
    name: str,
    spec: crd_cases.Obj,
    named: str,
) -> None:
    doc = crd_cases.policy(kind, name, kube_ns, spec)
    with trio.fail_after(20), pytest.raises(KubeError) as refused:
        await kube_admin.create(doc)
    assert refused.value.status == 422, refused.value
    assert named in refused.value.message


async def test_an_unknown_field_is_refused_not_pruned(
    kube_admin: KubeAdmin, ambit_crds: list[str], kube_ns: str
) -> None:
    doc = crd_cases.policy("AuthorizationPolicy", "typo", kube_ns, crd_cases.TYPO)
    with trio.fail_after(20), pytest.raises(KubeError) as refused:
        await kube_admin.create(doc, field_validation="Strict")
    assert refused.value.status == 400  # "strict decoding error"
    assert 'unknown field "spec.rules[0].from[0].source.principal"' in refused.value.message
