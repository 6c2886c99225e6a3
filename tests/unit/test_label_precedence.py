"""``ambit.io/`` labels win over their ``istio.io/`` aliases on the same object, label by
label: dataplane-mode, use-waypoint (with its -namespace, which goes with the name label
of the same prefix) and waypoint-for. A label that is present decides, even empty."""

from __future__ import annotations

import pytest

from ambit.waypoint_docs import waypoint_for as _for
from k8s.translate_l7 import OPT_OUT, use_waypoint, waypoint
from k8s.translate_parts import dataplane_mode, meshed_by_labels
from tests.k8s_builders import gateway

AMBIT_MODE, ISTIO_MODE = "ambit.io/dataplane-mode", "istio.io/dataplane-mode"
AMBIT_USE, ISTIO_USE = "ambit.io/use-waypoint", "istio.io/use-waypoint"
AMBIT_USE_NS, ISTIO_USE_NS = "ambit.io/use-waypoint-namespace", "istio.io/use-waypoint-namespace"
AMBIT_FOR, ISTIO_FOR = "ambit.io/waypoint-for", "istio.io/waypoint-for"


@pytest.mark.parametrize(
    ("labels", "mode"),
    [
        ({AMBIT_MODE: "none", ISTIO_MODE: "ambient"}, "none"),
        ({AMBIT_MODE: "ambient", ISTIO_MODE: "none"}, "ambient"),
        ({AMBIT_MODE: "", ISTIO_MODE: "ambient"}, ""),
        ({ISTIO_MODE: "ambient"}, "ambient"),
        ({}, None),
    ],
)
def test_dataplane_mode(labels: dict[str, str], mode: str | None) -> None:
    assert dataplane_mode(labels) == mode


def test_a_namespace_labelled_none_by_ambit_is_not_enrolled_by_istios_label() -> None:
    namespace = {AMBIT_MODE: "none", ISTIO_MODE: "ambient"}
    assert not meshed_by_labels({}, namespace)
    assert not meshed_by_labels(
        {ISTIO_MODE: "ambient", AMBIT_MODE: "none"}, {AMBIT_MODE: "ambient"}
    )


@pytest.mark.parametrize(
    ("labels", "bound"),
    [
        ({AMBIT_USE: "a", ISTIO_USE: "b"}, "shop/a"),
        ({AMBIT_USE: "none", ISTIO_USE: "b"}, OPT_OUT),
        ({AMBIT_USE: "a", ISTIO_USE: "none"}, "shop/a"),
        ({AMBIT_USE: "", ISTIO_USE: "b"}, None),  # present, even empty: ambit's decides
        ({ISTIO_USE: "b"}, "shop/b"),
        # The namespace label goes with the name label of its own prefix.
        ({AMBIT_USE: "a", AMBIT_USE_NS: "infra", ISTIO_USE: "b", ISTIO_USE_NS: "edge"}, "infra/a"),
        ({AMBIT_USE: "a", ISTIO_USE: "b", ISTIO_USE_NS: "edge"}, "shop/a"),
        ({ISTIO_USE: "b", ISTIO_USE_NS: "edge", AMBIT_USE_NS: "infra"}, "edge/b"),
    ],
)
def test_use_waypoint(labels: dict[str, str], bound: str | None) -> None:
    assert use_waypoint(tuple(labels.items()), "shop") == bound


@pytest.mark.parametrize(
    ("labels", "takes"),
    [
        ({AMBIT_FOR: "workload", ISTIO_FOR: "all"}, "workload"),
        ({AMBIT_FOR: "none", ISTIO_FOR: "service"}, "none"),
        ({ISTIO_FOR: "all"}, "all"),
        ({}, "service"),
    ],
)
def test_waypoint_for(labels: dict[str, str], takes: str) -> None:
    entry, problem = waypoint(gateway("edge", "shop", labels=labels))
    assert problem is None
    assert entry is not None
    assert entry.for_traffic == takes
    # `ambit waypoint list` reads it the same way.
    assert _for({"metadata": {"labels": labels}}) == takes
