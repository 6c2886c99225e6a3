"""The per-node L4 proxy (ztunnel).

``ztunnel`` (:class:`~ztunnel.ztunnel.Ztunnel`: the node's captured pods, per
snapshot), ``pod`` (one pod's three listeners), ``inbound`` (15008 HBONE and
15006 plaintext: policy, the dial to the app), ``outbound`` (15001: carries out
the plan), ``plan`` (where a captured connection goes, pure), ``telemetry``
(Istio's TCP metrics and the access log) and ``main`` (the process). Policy,
metrics, capture rules and namespaces are shared pieces in :mod:`mesh`. It
never runs iptables (the node's capture rules outlive it) and never parses
HTTP beyond the CONNECT of HBONE.
"""
