"""SpiffeId: parsing and printing, Istio's principal form, and every kind of bad input."""

from __future__ import annotations

import pytest

from mesh.identity import IdentityError, SpiffeId

WEB = "spiffe://cluster.local/ns/default/sa/web"


def test_parse_gives_its_parts() -> None:
    sid = SpiffeId.parse(WEB)
    assert (sid.trust_domain, sid.namespace, sid.service_account) == (
        "cluster.local",
        "default",
        "web",
    )


@pytest.mark.parametrize(
    "text",
    [
        WEB,
        "spiffe://example.org/ns/ambit-system/sa/ambit-controlplane",
        "spiffe://td_1.example-2/ns/a/sa/b.c-d",
    ],
)
def test_parse_then_print_round_trips(text: str) -> None:
    assert str(SpiffeId.parse(text)) == text
    assert SpiffeId.parse(str(SpiffeId.parse(text))) == SpiffeId.parse(text)


def test_print_of_constructed_id() -> None:
    assert str(SpiffeId("cluster.local", "default", "web")) == WEB


def test_principal_form_drops_the_scheme() -> None:
    assert SpiffeId.parse(WEB).principal == "cluster.local/ns/default/sa/web"


def test_principal_form_parses_back() -> None:
    sid = SpiffeId.parse(WEB)
    assert SpiffeId.from_principal(sid.principal) == sid
    assert SpiffeId.from_principal(WEB) == sid


def test_ids_are_values() -> None:
    assert SpiffeId.parse(WEB) == SpiffeId("cluster.local", "default", "web")
    assert len({SpiffeId.parse(WEB), SpiffeId.parse(WEB)}) == 1
    assert SpiffeId("a", "b", "c") < SpiffeId("a", "b", "d")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("https://cluster.local/ns/default/sa/web", "must start with 'spiffe://'"),
        ("cluster.local/ns/default/sa/web", "must start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/default/sa/web", "must start with 'spiffe://'"),
        ("", "must start with 'spiffe://'"),
    ],
)
def test_rejects_wrong_scheme(text: str, says: str) -> None:
    with pytest.raises(IdentityError, match=says):
        SpiffeId.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://cluster.local",
        "spiffe://cluster.local/",
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/ns/default/sa",
        "spiffe://cluster.local/ns/default/sa/web/",
        "spiffe://cluster.local/ns/default/sa/web/extra",
        "spiffe://cluster.local/namespace/default/sa/web",
        "spiffe://cluster.local/ns/default/serviceaccount/web",
        "spiffe://cluster.local/sa/web/ns/default",
    ],
)
def test_rejects_wrong_path_shape(text: str) -> None:
    with pytest.raises(IdentityError, match=r"not of the form spiffe://<trust-domain>/ns/"):
        SpiffeId.parse(text)


def test_rejects_empty_trust_domain() -> None:
    with pytest.raises(IdentityError, match="empty trust domain"):
        SpiffeId.parse("spiffe:///ns/default/sa/web")


@pytest.mark.parametrize(
    "trust_domain", ["Cluster.local", "cluster.local:8080", "user@cluster.local", "clu ster"]
)
def test_rejects_bad_trust_domain(trust_domain: str) -> None:
    with pytest.raises(IdentityError, match=r"trust domain .* must be lowercase"):
        SpiffeId.parse(f"spiffe://{trust_domain}/ns/default/sa/web")


@pytest.mark.parametrize(
    ("namespace", "service_account", "what"),
    [
        ("", "web", "namespace"),
        ("Default", "web", "namespace"),
        ("-default", "web", "namespace"),
        ("default-", "web", "namespace"),
        ("de_fault", "web", "namespace"),
        ("%64efault", "web", "namespace"),
        ("default", "", "service account"),
        ("default", "Web", "service account"),
        ("default", "web*", "service account"),
        ("default", "w" * 254, "service account"),
    ],
)
def test_rejects_names_that_are_not_kubernetes_names(
    namespace: str, service_account: str, what: str
) -> None:
    with pytest.raises(IdentityError, match=f"^{what} .* is not a Kubernetes name"):
        SpiffeId.parse(f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}")


@pytest.mark.parametrize("suffix", ["?x=1", "#frag"])
def test_rejects_query_and_fragment(suffix: str) -> None:
    with pytest.raises(IdentityError, match="no query or fragment"):
        SpiffeId.parse(WEB + suffix)


def test_rejects_non_string() -> None:
    with pytest.raises(IdentityError, match="is a string, not bytes"):
        SpiffeId.parse(WEB.encode())  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(IdentityError, match="namespace"):
        SpiffeId("cluster.local", "Bad", "web")


def test_principal_form_rejects_bad_input_with_the_same_messages() -> None:
    with pytest.raises(IdentityError, match="not of the form"):
        SpiffeId.from_principal("cluster.local/ns/default")
    with pytest.raises(IdentityError, match="trust domain"):
        SpiffeId.from_principal("Cluster/ns/default/sa/web")
