"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection
does it: of several control-plane replicas one leads and runs the leader's tasks (the
status writer, the waypoint deployer); every replica serves the config stream and the CA.

- The Lease (``ambit-controlplane`` in the control plane's namespace) names its holder
  (the pod's name, or the host's with a random suffix), ``leaseDurationSeconds`` and
  ``renewTime``. A replica may take it when it is free (no holder: released), its own, or
  when the record has not changed for a lease duration by this replica's own clock
  (:class:`Elector`: the time the record was *observed* to change counts, never the
  holder's clock, as in client-go).
- Every write carries the ``resourceVersion`` last read: of two replicas that try at once,
  one gets 409 and stays a follower.
- The leader renews every retry period; when it could not renew for the renew deadline,
  or finds the Lease held by another, it has lost: its tasks are cancelled and it
  campaigns again. Defaults are client-go's: 15 s lease, 10 s renew deadline, 2 s retry.
- Leaving (cancellation: the process stops) releases the Lease (no holder,
  ``leaseDurationSeconds: 1``) so a peer takes over at its next try, not a lease later.

:class:`Elector` is the decision, sans-IO (times given); :func:`run_when_leader` the
thin Trio loop around it. Gaining and losing leadership are logged (``leader_elected``,
``leader_lost``) and :class:`Leadership` tells whoever asks (the metrics).
"""

from __future__ import annotations

import datetime
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
import trio

from ca.kube import ApiUnavailable
from mesh.constants import SYSTEM_NAMESPACE

log = structlog.get_logger("k8s.leader")

LEASE_NAME: Final = "ambit-controlplane"
RELEASE_SECONDS: Final = 2.0  # at shutdown, for the release to reach the API server
JITTER: Final = 1.2  # campaign tries wait retry_period times up to this factor

Json = dict[str, Any]
LeaderTask = Callable[[], Awaitable[None]]


class LeaseApi(Protocol):
    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Json]: ...


def default_identity() -> str:
    """The pod's name (``POD_NAME``, the downward API) or the host's, with a random suffix
    so two processes on one host differ."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str = SYSTEM_NAMESPACE
    name: str = LEASE_NAME
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0  # seconds a record must stay unchanged to be taken over
    renew_deadline: float = 10.0  # a leader that could not renew this long steps down
    retry_period: float = 2.0  # between tries, to take or to renew

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < retry period < renew deadline < lease duration")

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"


def micro_time(when: datetime.datetime | None = None) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds, UTC."""
    when = when or datetime.datetime.now(datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (its spec) and the resourceVersion it was read at."""

    holder: str = ""
    duration: int = 0  # seconds
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0
    resource_version: str = ""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LeaseRecord:
        spec = doc.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((doc.get("metadata") or {}).get("resourceVersion") or ""),
        )


class Elector:
    """The decisions of one replica, sans-IO: ``now`` is its monotonic clock (seconds),
    ``wall`` a MicroTime to write."""

    def __init__(self, identity: str, lease_duration: float) -> None:
        self.identity = identity
        self.lease_duration = lease_duration
        self.record: LeaseRecord | None = None
        self.observed_at = -float("inf")  # when ``record`` was last seen to change

    def observe(self, record: LeaseRecord | None, now: float) -> None:
        """The Lease as read (None: there is none)."""
        if record != self.record:
            self.observed_at = now
        self.record = record

    @property
    def holding(self) -> bool:
        """Whether the last record seen names this replica."""
        return self.record is not None and self.record.holder == self.identity

    def may_acquire(self, now: float) -> bool:
        """Free (none, released), ours, or unchanged for its lease duration."""
        record = self.record
        if record is None or record.holder in ("", self.identity):
            return True
        duration = record.duration or self.lease_duration
        return now >= self.observed_at + duration

    def desired(self, wall: str) -> Json:
        """The spec to write to take or renew the Lease."""
        record = self.record or LeaseRecord()
        renewing = record.holder == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": record.acquire_time if renewing and record.acquire_time else wall,
            "renewTime": wall,
            "leaseTransitions": record.transitions + (0 if renewing or self.record is None else 1),
        }

    def released(self, wall: str) -> Json:
        """The spec that gives the Lease up: no holder, and a peer may take it at once."""
        record = self.record or LeaseRecord()
        return {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": record.acquire_time or wall,
            "renewTime": wall,
            "leaseTransitions": record.transitions,
        }


@dataclass
class Leadership:
    """Whether this replica leads now, and how often it has become leader."""

    leading: bool = False
    terms: int = 0


async def _read(api: LeaseApi, config: LeaseConfig) -> LeaseRecord | None:
    status, body = await api.request("GET", f"{config.path}/{config.name}")
    if status == 404:
        return None
    if status != 200:
        raise ApiUnavailable(f"GET lease {config.name}: HTTP {status}: {body.get('message')}")
    return LeaseRecord.from_json(body)


async def _write(api: LeaseApi, config: LeaseConfig, elector: Elector, spec: Json) -> bool:
    """Create or update the Lease with ``spec`` at the resourceVersion last read; False
    when another replica wrote it first (409)."""
    metadata: Json = {"name": config.name, "namespace": config.namespace}
    doc = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
           "spec": spec}  # fmt: skip
    if elector.record is None:
        status, body = await api.request("POST", config.path, doc)
    else:
        metadata["resourceVersion"] = elector.record.resource_version
        status, body = await api.request("PUT", f"{config.path}/{config.name}", doc)
    if status == 409:
        return False
    if status not in (200, 201):
        raise ApiUnavailable(f"write lease {config.name}: HTTP {status}: {body.get('message')}")
    elector.observe(LeaseRecord.from_json(body), trio.current_time())
    return True


async def try_acquire_or_renew(api: LeaseApi, config: LeaseConfig, elector: Elector) -> bool:
    """One try: read the Lease, and take or renew it if this replica may. Whether it now
    holds it. Raises :class:`ApiUnavailable` when the API server gave no usable answer."""
    elector.observe(await _read(api, config), trio.current_time())
    if not elector.may_acquire(trio.current_time()):
        return False
    return await _write(api, config, elector, elector.desired(micro_time()))


async def _campaign(api: LeaseApi, config: LeaseConfig, elector: Elector) -> None:
    """Return once this replica holds the Lease; tries every retry period (jittered)."""
    failures = 0
    while True:
        try:
            if await try_acquire_or_renew(api, config, elector):
                return
            failures = 0
        except ApiUnavailable as exc:
            failures += 1
            if failures == 1:
                log.warning("leader_election_failed", lease=config.name, reason=str(exc))
        await trio.sleep(config.retry_period * random.uniform(1.0, JITTER))


async def _renew(api: LeaseApi, config: LeaseConfig, elector: Elector) -> str:
    """Renew every retry period; return why leadership is lost."""
    renewed = trio.current_time()
    while True:
        await trio.sleep(config.retry_period)
        left = renewed + config.renew_deadline - trio.current_time()
        error = "no renewal succeeded before the renew deadline"
        with trio.move_on_after(max(left, 0.0)):
            try:
                if await try_acquire_or_renew(api, config, elector):
                    renewed = trio.current_time()
                    continue
            except ApiUnavailable as exc:
                error = str(exc)
            if not elector.holding and elector.record is not None and elector.record.holder:
                return f"the lease is held by {elector.record.holder}"
        if trio.current_time() >= renewed + config.renew_deadline:
            return error


async def _release(api: LeaseApi, config: LeaseConfig, elector: Elector) -> None:
    if not elector.holding:
        return
    try:
        if await _write(api, config, elector, elector.released(micro_time())):
            log.info("leader_released", lease=config.name, identity=config.identity)
    except ApiUnavailable as exc:
        log.warning("leader_release_failed", lease=config.name, reason=str(exc))


async def run_when_leader(
    api: LeaseApi,
    config: LeaseConfig,
    tasks: Sequence[LeaderTask],
    *,
    leadership: Leadership | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Campaign for the Lease; while leading, run ``tasks`` (each until cancelled); when
    leadership is lost, cancel them and campaign again. Runs until cancelled, then
    releases the Lease if held. A task that raises ends this (the Lease released)."""
    elector = Elector(config.identity, config.lease_duration)
    state = leadership if leadership is not None else Leadership()
    task_status.started()
    try:
        while True:
            await _campaign(api, config, elector)
            state.leading, state.terms = True, state.terms + 1
            log.info("leader_elected", lease=config.name, identity=config.identity)
            async with trio.open_nursery() as nursery:
                for task in tasks:
                    nursery.start_soon(task)
                reason = await _renew(api, config, elector)
                nursery.cancel_scope.cancel()
            state.leading = False
            log.warning("leader_lost", lease=config.name, identity=config.identity, reason=reason)
    finally:
        state.leading = False
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_SECONDS):
            await _release(api, config, elector)
