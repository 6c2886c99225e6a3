"""What the traffic-policy kinds mean for the mesh, for :class:`k8s.translate.Translator`:
DestinationRules and BackendTrafficPolicies (how a waypoint treats a Service), and the
FaultInjections and LocalRateLimits route rules name (``ExtensionRef`` filters). Each
becomes its :mod:`mesh.model_traffic` value as read; what is wrong with it is a
:class:`~k8s.problems.Problem` on the object, never a silent drop:

- a DestinationRule's ``host`` names one Service: ``name`` (the rule's namespace),
  ``name.ns``, ``name.ns.svc`` or ``name.ns.svc.<cluster domain>``. A wildcard host
  (``WildcardHost``) or one that names no Service, or a Service not in the mesh
  (``TargetNotFound``), has no effect (a Service that appears later takes it);
- a BackendTrafficPolicy's ``targetRefs`` name Services of its namespace; another kind,
  or a Service not in the mesh, is ``TargetNotFound`` (GEP-713's reasons);
- of two rules (or policies) for one Service, the older counts (created first, then by
  namespace/name, as :meth:`mesh.model.MeshSnapshot.destination_rule` picks); the
  newer is ``Conflicted``;
- the fields Istio has that ambit does not apply are ``UnsupportedField``, each path
  named; a ``simple`` balancer it does not apply (``PASSTHROUGH``, ``UNSPECIFIED``),
  ``UnsupportedValue``; the rest of the object applies.

:class:`TrafficPolicies` keeps the four collections and, for the problems, which rules
and policies name each Service: the translator gives it each object that changes, then
the Services whose model entry changed, and sets the problems it returns. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from k8s import manifests as m
from k8s.indexes import Entries, SetIndex
from k8s.istio_kinds import SUBSETS_INSTEAD
from k8s.problems import Problem
from k8s.store import ObjectRef
from mesh import model_traffic as mt
from mesh.constants import DEFAULT_CLUSTER_DOMAIN
from mesh.model_l7 import ParentRef

KINDS: Final = ("DestinationRule", "BackendTrafficPolicy", "FaultInjection", "LocalRateLimit")
TARGET_NOT_FOUND: Final = "TargetNotFound"
CONFLICTED: Final = "Conflicted"
WILDCARD_HOST: Final = "WildcardHost"
UNSUPPORTED_FIELD: Final = "UnsupportedField"
UNSUPPORTED_VALUE: Final = "UnsupportedValue"
NOT_ACCEPTED: Final = (
    WILDCARD_HOST,
    TARGET_NOT_FOUND,
    CONFLICTED,
)  # the object (part) has no effect
NOT_SUPPORTED: Final = (UNSUPPORTED_FIELD, UNSUPPORTED_VALUE)  # applies, but not all of it

Policy = m.DestinationRule | m.BackendTrafficPolicy


def service_of_host(host: str, namespace: str, domain: str = DEFAULT_CLUSTER_DOMAIN) -> str | None:
    """The Service key (``namespace/name``) a DestinationRule's ``host`` names, None when it
    names none (a wildcard, a name outside the cluster's Service names)."""
    if "*" in host:
        return None
    parts = host.removesuffix("." + domain).split(".")
    if len(parts) == 3 and parts[2] == "svc":
        parts = parts[:2]
    if len(parts) == 1:
        return f"{namespace}/{parts[0]}"
    if len(parts) == 2 and all(parts):
        return f"{parts[1]}/{parts[0]}"
    return None


def _rank(obj: Policy) -> tuple[str, str]:
    return (obj.creation_timestamp, f"{obj.namespace}/{obj.name}")


def _service_ref(name: str) -> ParentRef:
    return ParentRef("", "Service", name)


# --- model forms ---------------------------------------------------------------------------


def destination_rule(rule: m.DestinationRule) -> mt.DestinationRule | None:
    service = service_of_host(rule.host, rule.namespace)
    if service is None:
        return None
    return mt.DestinationRule(
        rule.name, rule.namespace, rule.host, service, rule.load_balancer, rule.pool,
        rule.outlier, rule.creation_timestamp,
    )  # fmt: skip


def backend_traffic_policy(policy: m.BackendTrafficPolicy) -> mt.BackendTrafficPolicy:
    return mt.BackendTrafficPolicy(
        policy.name, policy.namespace, tuple(_services(policy)), policy.budget,
        policy.creation_timestamp,
    )  # fmt: skip


def fault_injection(fault: m.FaultInjection) -> mt.FaultInjection:
    return mt.FaultInjection(
        fault.name, fault.namespace, fault.delay_ms, fault.delay_percent, fault.abort_status,
        fault.abort_grpc_status, fault.abort_percent,
    )  # fmt: skip


def local_rate_limit(limit: m.LocalRateLimit) -> mt.LocalRateLimit:
    return mt.LocalRateLimit(
        limit.name, limit.namespace, limit.requests, limit.unit,  # type: ignore[arg-type]
        limit.burst, limit.per_client,
    )  # fmt: skip


def _services(obj: Policy) -> list[str]:
    """The Service keys ``obj`` names (resolved; unresolved names none)."""
    if isinstance(obj, m.DestinationRule):
        found = service_of_host(obj.host, obj.namespace)
        return [found] if found is not None else []
    return list(dict.fromkeys(
        f"{obj.namespace}/{t.name}" for t in obj.target_refs if (t.group, t.kind) == ("", "Service")
    ))  # fmt: skip


# --- problems ------------------------------------------------------------------------------


def _unsupported(obj: Policy) -> list[Problem]:
    found = []
    if obj.unapplied:
        instead = ""
        if "spec.subsets" in obj.unapplied:
            instead = f" ({SUBSETS_INSTEAD})"
        found.append(
            Problem(UNSUPPORTED_FIELD, f"{', '.join(obj.unapplied)}: not applied by ambit{instead}")
        )
    if isinstance(obj, m.DestinationRule) and obj.ignored_balancer:
        message = (
            f"spec.trafficPolicy.loadBalancer.simple: {obj.ignored_balancer} is not applied by"
            " ambit; the waypoint balances by LEAST_REQUEST (or set the annotation"
            " ambit.io/load-balancer)"
        )
        found.append(Problem(UNSUPPORTED_VALUE, message))
    return found


def policy_problems(
    obj: Policy, in_mesh: Callable[[str], bool], older: Callable[[str], Policy | None]
) -> tuple[Problem, ...]:
    """Every problem of a DestinationRule or BackendTrafficPolicy: ``in_mesh`` says whether
    a Service key is in the mesh, ``older`` which object of its kind counts for a Service
    (the oldest naming it)."""
    kind = type(obj).__name__
    found: list[Problem] = []
    targets: list[tuple[str, ParentRef | None]] = []
    if isinstance(obj, m.DestinationRule):
        key = service_of_host(obj.host, obj.namespace)
        if key is None and "*" in obj.host:
            found.append(Problem(WILDCARD_HOST, (
                f"spec.host: {obj.host!r} is a wildcard; ambit applies a DestinationRule to one"
                " Service (name, name.namespace or its FQDN), so this one has no effect"
            )))  # fmt: skip
        elif key is None:
            found.append(Problem(TARGET_NOT_FOUND, (
                f"spec.host: {obj.host!r} names no Service (write name, name.namespace,"
                f" name.namespace.svc or name.namespace.svc.{DEFAULT_CLUSTER_DOMAIN}); the rule"
                " has no effect"
            )))  # fmt: skip
        targets += [(key, None)] if key is not None else []
    else:
        for i, t in enumerate(obj.target_refs):
            key = f"{obj.namespace}/{t.name}"
            if (t.group, t.kind) == ("", "Service"):
                targets.append((key, _service_ref(t.name)))
                continue
            message = (
                f"spec.targetRefs[{i}]: {t.group or 'core'}/{t.kind} {t.name}: ambit applies"
                " BackendTrafficPolicies to Services only"
            )
            found.append(Problem(TARGET_NOT_FOUND, message, ParentRef(t.group, t.kind, t.name)))
    for key, parent in dict.fromkeys(targets):
        what = "rule" if kind == "DestinationRule" else "policy"
        if not in_mesh(key):
            message = f"Service {key} is not in the mesh; the {what} applies to it once it is"
            found.append(Problem(TARGET_NOT_FOUND, message, parent))
            continue
        first = older(key)
        if first is not None and first is not obj:
            message = (
                f"Service {key} has {kind} {first.namespace}/{first.name} too, created first;"
                f" only that one applies to it"
            )
            found.append(Problem(CONFLICTED, message, parent))
    return tuple(found + _unsupported(obj))


# --- the translator's side -------------------------------------------------------------------


class TrafficPolicies:
    """The four collections of the model and, for the problems of DestinationRules and
    BackendTrafficPolicies, which of them name each Service."""

    def __init__(self) -> None:
        self.destination_rules = Entries[mt.DestinationRule]()
        self.backend_traffic_policies = Entries[mt.BackendTrafficPolicy]()
        self.fault_injections = Entries[mt.FaultInjection]()
        self.local_rate_limits = Entries[mt.LocalRateLimit]()
        self._policies: dict[ObjectRef, Policy] = {}
        self._naming: SetIndex[tuple[str, str], ObjectRef] = SetIndex()  # Service key -> policies
        self._dirty: set[ObjectRef] = set()  # policies whose problems to decide again

    def collections(self) -> dict[str, Entries[Any]]:
        """The snapshot's collections this keeps, by their field name."""
        return {
            "destination_rules": self.destination_rules,
            "backend_traffic_policies": self.backend_traffic_policies,
            "fault_injections": self.fault_injections,
            "local_rate_limits": self.local_rate_limits,
        }

    def put(self, ref: ObjectRef, obj: m.K8sObject | None) -> None:
        """Take one object of :data:`KINDS` (None: it went)."""
        kind, namespace, name = ref
        key = f"{namespace}/{name}"
        if kind == "FaultInjection":
            fault = obj if isinstance(obj, m.FaultInjection) else None
            self.fault_injections.set(key, fault_injection(fault) if fault else None)
        elif kind == "LocalRateLimit":
            limit = obj if isinstance(obj, m.LocalRateLimit) else None
            self.local_rate_limits.set(key, local_rate_limit(limit) if limit else None)
        else:
            old = self._policies.pop(ref, None)
            new = obj if isinstance(obj, m.DestinationRule | m.BackendTrafficPolicy) else None
            for service in _services(old) if old is not None else ():
                self._naming.discard((kind, service), ref)
                self._dirty.update(self._naming.get((kind, service)))
            self._dirty.add(ref)
            if new is not None:
                self._policies[ref] = new
                for service in _services(new):
                    self._naming.add((kind, service), ref)
                    self._dirty.update(self._naming.get((kind, service)))
            if isinstance(new, m.DestinationRule) or kind == "DestinationRule":
                rule = destination_rule(new) if isinstance(new, m.DestinationRule) else None
                self.destination_rules.set(key, rule)
            else:
                policy = new if isinstance(new, m.BackendTrafficPolicy) else None
                entry = backend_traffic_policy(policy) if policy else None
                self.backend_traffic_policies.set(key, entry)

    def problems(
        self, services: Iterable[ObjectRef], model: Callable[[str], object | None]
    ) -> Mapping[ObjectRef, tuple[Problem, ...]]:
        """The problems of every DestinationRule and BackendTrafficPolicy that may have
        changed since the last call (those gone: none), ``services`` the Services whose
        model entry (``model``: by key) was recomputed since."""
        for _, namespace, name in services:
            for kind in ("DestinationRule", "BackendTrafficPolicy"):
                self._dirty.update(self._naming.get((kind, f"{namespace}/{name}")))

        def in_mesh(key: str) -> bool:
            return model(key) is not None

        out: dict[ObjectRef, tuple[Problem, ...]] = {}
        for ref in self._dirty:
            obj = self._policies.get(ref)
            if obj is None:
                out[ref] = ()
                continue
            kind = ref[0]

            def older(service: str, kind: str = kind) -> Policy | None:
                refs = self._naming.get((kind, service))
                return min((self._policies[r] for r in refs), key=_rank, default=None)

            out[ref] = policy_problems(obj, in_mesh, older)
        self._dirty.clear()
        return out
