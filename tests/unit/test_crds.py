"""The CRDs of ambit's own kinds (``k8s.crds``): named from ``KINDS``, structural, closed,
and in agreement with ambit's reader on the cases the real API server is tested on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from k8s import crds
from k8s.manifests import ManifestError, kind_info, parse_object
from tests import crd_cases

KUBERNETES_VERSION = "1.36"


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from nodes(schema[key], f"{path}[]")


def test_ambit_owns_its_three_policy_kinds_and_two_route_filters() -> None:
    assert [c["spec"]["names"]["kind"] for c in crds.crds()] == [
        "AuthorizationPolicy",
        "PeerAuthentication",
        "RequestAuthentication",
        "FaultInjection",
        "LocalRateLimit",
    ]
    assert {c["spec"]["group"] for c in crds.crds()[3:]} == {"networking.ambit.io"}


@pytest.mark.parametrize("crd", crds.crds(), ids=lambda c: c["metadata"]["name"])
def test_a_crd_takes_its_names_from_kinds(crd: dict[str, Any]) -> None:
    info = kind_info(crd["spec"]["names"]["kind"])
    assert info is not None
    assert crd["metadata"]["name"] == info.resource
    assert crd["spec"]["names"]["plural"] == info.plural
    assert crd["spec"]["names"].get("shortNames", []) == list(info.short_names)
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert f"{crd['spec']['group']}/{version['name']}" == info.api_versions[0]
    assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"


@pytest.mark.parametrize("crd", crds.crds(), ids=lambda c: c["metadata"]["name"])
def test_a_crd_is_structural_and_closed(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in nodes(schema):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node or "additionalProperties" in node, path


@pytest.mark.parametrize("crd", crds.crds(), ids=lambda c: c["metadata"]["name"])
def test_a_crd_is_valid_for_the_tested_kubernetes(crd: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True) == "1.36"


@pytest.mark.parametrize(
    ("kind", "name", "spec"),
    [(kind, name, spec) for kind, cases in crd_cases.VALID.items() for name, spec in cases],
)
def test_ambit_reads_what_the_server_stores(kind: str, name: str, spec: dict[str, Any]) -> None:
    obj = parse_object(crd_cases.policy(kind, name, "shop", spec))
    assert type(obj).__name__ == kind


@pytest.mark.parametrize(
    ("kind", "name", "spec", "named"),
    [(kind, *case) for kind, cases in crd_cases.INVALID.items() for case in cases],
)
def test_ambit_refuses_what_the_server_refuses(
    kind: str, name: str, spec: dict[str, Any], named: str
) -> None:
    with pytest.raises(ManifestError):
        parse_object(crd_cases.policy(kind, name, "shop", spec))


def test_ambit_refuses_the_field_the_server_would_prune() -> None:
    with pytest.raises(ManifestError, match="principal"):
        parse_object(crd_cases.policy("AuthorizationPolicy", "typo", "shop", crd_cases.TYPO))
