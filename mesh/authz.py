"""L4 authorization at ztunnel: Istio's AuthorizationPolicy and PeerAuthentication semantics,
as pure functions of a connection and the model.

``evaluate``: a matching DENY policy denies; otherwise, if any ALLOW policy selects the
destination, one of them must match; with none, the connection is allowed. Rules are
OR'd; inside a rule the sources, operations are each OR'd and AND'd with each other;
the fields of a source or operation are AND'd and the values of one field OR'd.

What ztunnel cannot see (L7 fields and ``when`` conditions, which the model names in a
rule's ``l7``) follows Istio's ztunnel: an ALLOW rule naming any never matches, so it
cannot widen access; a DENY rule is applied on its L4 part alone, so it cannot narrow a
denial.

The matching itself (:mod:`mesh.authz_match`) is shared with the waypoint's L7 evaluation.
A plaintext connection has no identity: it never matches ``principals`` or
``namespaces`` and always matches ``notPrincipals`` / ``notNamespaces``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from mesh.authz_match import peer_matches, port_matches
from mesh.identity import SpiffeId
from mesh.model import Authorization, MeshSnapshot, Rule, Workload

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    """What ztunnel knows of an inbound connection (``src_identity`` None: plaintext)."""

    src_ip: str
    src_identity: SpiffeId | None
    dst_workload: Workload
    dst_port: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str | None  # "namespace/name" of the policy that decided, if one did
    reason: str  # for the operator reading the log


def evaluate(conn: Connection, policies: Iterable[Authorization]) -> Decision:
    """Decide ``conn`` against ``policies``; those not selecting the destination are ignored."""
    dst = f"{conn.dst_workload.namespace}/{conn.dst_workload.name}"
    selecting = sorted(
        (p for p in policies if p.applies_to(conn.dst_workload)), key=lambda p: p.key
    )
    return decide_l4(selecting, conn.src_identity, conn.src_ip, conn.dst_port, dst)


def decide_l4(
    selecting: Sequence[Authorization],
    src_identity: SpiffeId | None,
    src_ip: str,
    dst_port: int,
    dst: str,
    *,
    enforcer: str = "ztunnel",
) -> Decision:
    """Decide a connection against the policies that apply to it (by key), seeing only
    L4: what ztunnel does, and a waypoint for traffic that is not HTTP."""
    conn = _Seen(src_identity, src_ip, dst_port)
    for policy in (p for p in selecting if p.action == "DENY"):
        for i, rule in enumerate(policy.rules, start=1):
            why = _rule_matches(rule, conn)
            if why is not None:
                if rule.l7:
                    why += f"; its L7 fields ({', '.join(rule.l7)}) are not checked at L4"
                reason = f"denied by DENY policy {policy.key} (rule {i}: {why})"
                return Decision(False, policy.key, reason)
    allows = [p for p in selecting if p.action == "ALLOW"]
    if not allows:
        return Decision(True, None, f"allowed: no ALLOW policy selects {dst}")
    skipped = 0
    for policy in allows:
        for i, rule in enumerate(policy.rules, start=1):
            if rule.l7:
                skipped += 1
                continue
            why = _rule_matches(rule, conn)
            if why is not None:
                return Decision(
                    True, policy.key, f"allowed by ALLOW policy {policy.key} (rule {i}: {why})"
                )
    if len(allows) == 1:
        reason = f"the only ALLOW policy selecting {dst}, {allows[0].key}, did not match"
    else:
        reason = f"no ALLOW policy of the {len(allows)} selecting {dst} matched"
    if skipped:
        hint = (
            "a waypoint is needed to enforce them"
            if enforcer == "ztunnel"
            else "this traffic is not HTTP"
        )
        reason += f" ({skipped} ALLOW rule(s) with L7 fields never match at {enforcer}; {hint})"
    return Decision(False, None, reason)


@dataclass(frozen=True)
class _Seen:
    src_identity: SpiffeId | None
    src_ip: str
    dst_port: int


def _rule_matches(rule: Rule, conn: _Seen, why_not: list[str] | None = None) -> str | None:
    """Why ``rule`` matches ``conn`` (the conditions met, for the log), or None; given
    ``why_not``, a rule that does not match says there which condition failed."""
    met: list[str] = []
    src = conn.src_identity
    if rule.sources:
        if why_not is None:
            found = next(
                (w for s in rule.sources if (w := peer_matches(s, src, conn.src_ip)) is not None),
                None,
            )
        else:
            found = first_match(
                "source", rule.sources, lambda s, w: peer_matches(s, src, conn.src_ip, w), why_not
            )
        if found is None:
            return None
        met += found
    if rule.operations:
        if why_not is None:
            found = next(
                (w for o in rule.operations if (w := port_matches(o, conn.dst_port)) is not None),
                None,
            )
        else:
            found = first_match(
                "operation", rule.operations, lambda o, w: port_matches(o, conn.dst_port, w),
                why_not,
            )  # fmt: skip
        if found is None:
            return None
        met += found
    return ", ".join(met) or "matches every connection"


def first_match(
    label: str,
    items: Sequence[T],
    match: Callable[[T, list[str]], list[str] | None],
    why_not: list[str],
) -> list[str] | None:
    """What the first of ``items`` that matches met, or None, with each one's failed
    condition appended to ``why_not`` (``source 2: namespace foo not in [bar]``)."""
    failed: list[str] = []
    for n, item in enumerate(items, start=1):
        mine: list[str] = []
        found = match(item, mine)
        if found is not None:
            return found
        shown = f" {n}" if len(items) > 1 else ""
        failed.append(f"{label}{shown}: {'; '.join(mine) or 'no match'}")
    why_not.append(", ".join(failed))
    return None


def explain_l4_rule(
    rule: Rule, src_identity: SpiffeId | None, src_ip: str, dst_port: int
) -> tuple[bool, str]:
    """Whether ``rule`` matches a connection at L4, and why or why not in words: the
    evaluator's own check (``ambit why``)."""
    why_not: list[str] = []
    found = _rule_matches(rule, _Seen(src_identity, src_ip, dst_port), why_not)
    return (True, found) if found is not None else (False, "; ".join(why_not))


def peer_auth_mode(snapshot: MeshSnapshot, workload: Workload) -> Mode:
    """The mTLS mode for ``workload``: a PeerAuthentication selecting it by label beats its
    namespace's, which beats the mesh-wide one of the root namespace; UNSET defers to the
    next level; with none set, PERMISSIVE. Ties at one level go to the first by name."""
    for pa in snapshot.peer_authentication_for(workload):
        if pa.mode != "UNSET":
            return pa.mode
    return "PERMISSIVE"
