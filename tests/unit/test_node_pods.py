"""The node agent's pure decisions: which pods of its node are captured, their
addresses from the API and from a CNI result, and what it remembers across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.pods import ips_of_result, pod_view, skip_reason
from node.records import PodRecord, Records

EXCLUDED = frozenset({"kube-system", "ambit-system"})


def raw_pod(
    ns: str = "shop",
    name: str = "cart",
    *,
    labels: dict[str, str] | None = None,
    host_network: bool = False,
    phase: str = "Running",
    ips: tuple[str, ...] = ("10.1.0.5",),
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": "u-1", "labels": labels or {}},
        "spec": {"nodeName": "n1", "serviceAccountName": "cart", "hostNetwork": host_network},
        "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]},
    }


AMBIENT = {"ambit.io/dataplane-mode": "ambient"}


@pytest.mark.parametrize(
    ("pod", "ns_labels", "captured"),
    [
        (raw_pod(), AMBIENT, True),
        (raw_pod(), {}, False),
        (raw_pod(), None, False),
        (raw_pod(labels=AMBIENT), {}, True),
        (raw_pod(labels={"ambit.io/dataplane-mode": "none"}), AMBIENT, False),
        (raw_pod(), {"istio.io/dataplane-mode": "ambient"}, True),
        (raw_pod(ns="kube-system"), AMBIENT, False),
        (raw_pod(host_network=True), AMBIENT, False),
        (raw_pod(phase="Succeeded"), AMBIENT, False),
    ],
)
def test_which_pods_are_captured(
    pod: dict[str, Any], ns_labels: dict[str, str] | None, captured: bool
) -> None:
    reason = skip_reason(pod_view(pod), ns_labels, EXCLUDED)
    assert (reason is None) == captured, reason
    if not captured:
        assert reason  # always says why, in words


def test_a_pod_view_reads_what_the_agent_needs() -> None:
    view = pod_view(raw_pod(ips=("10.1.0.5", "fd00::5")))
    assert (view.key, view.uid, view.service_account, view.node) == (
        "shop/cart",
        "u-1",
        "cart",
        "n1",
    )
    assert view.ips == ("10.1.0.5", "fd00::5")
    assert not view.deleting
    legacy = raw_pod()
    legacy["status"] = {"podIP": "10.1.0.9", "phase": "Running"}
    assert pod_view(legacy).ips == ("10.1.0.9",)


def test_addresses_of_a_cni_result_are_its_ipv4s() -> None:
    result = {"ips": [{"address": "10.1.0.5/24"}, {"address": "fd00::5/64"}, {"address": ""}]}
    assert ips_of_result(result) == ("10.1.0.5",)
    assert ips_of_result({}) == ()


def test_records_survive_a_restart(tmp_path: Path) -> None:
    records = Records(tmp_path)
    records.put(PodRecord("u-1", "shop", "cart", "/run/netns/cni-1", ("10.1.0.5",), "c1"))
    records.put(PodRecord("u-2", "shop", "web", "/run/netns/cni-2"))
    records.drop("u-2")
    again = Records(tmp_path)
    again.load()
    assert again.all() == [
        PodRecord("u-1", "shop", "cart", "/run/netns/cni-1", ("10.1.0.5",), "c1")
    ]


def test_unreadable_records_are_logged_and_ignored(tmp_path: Path) -> None:
    (tmp_path / "pods.json").write_text("{not json")
    records = Records(tmp_path)
    records.load()
    assert records.all() == []
