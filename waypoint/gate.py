"""What a request must pass at the waypoint before it goes anywhere, in Envoy's order:
RequestAuthentication (the JWT, if any: a bad one is refused), then AuthorizationPolicy
(DENY, then ALLOW, over the policies whose ``targetRefs`` bind this waypoint or the
destination Service). Both HTTP/1.1 and HTTP/2 sessions ask :meth:`Gate.check`.

The policies of a snapshot that bind this waypoint are found once per snapshot; when
none binds, a request passes without being looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from mesh.model import Authorization, MeshSnapshot, RequestAuthentication
from waypoint.authz import evaluate_request
from waypoint.jwks import JwksCache
from waypoint.jwt import authenticate, inline_keys, providers_for
from waypoint.replies import LocalReply, jwt_refused, rbac_denied
from waypoint.request import L7Request, RequestAuth, WaypointScope

log = structlog.get_logger("waypoint")


@dataclass(frozen=True)
class Passed:
    """The request may go on, with ``headers`` (JWT outputs set, the token dropped when
    not forwarded) and the policy decision's words, for the access log."""

    headers: list[tuple[str, str]]
    auth: RequestAuth | None
    reason: str


@dataclass(frozen=True)
class _Bound:
    """The snapshot's policies and RequestAuthentications that can bind this waypoint."""

    policies: tuple[Authorization, ...]
    authentications: tuple[RequestAuthentication, ...]
    uris: tuple[str, ...]  # the key sets they name by jwksUri


class Gate:
    def __init__(self, scope: WaypointScope, jwks: JwksCache | None = None) -> None:
        self.scope = scope
        self.jwks = jwks
        self._of: tuple[MeshSnapshot, _Bound] | None = None

    def _bound(self, snapshot: MeshSnapshot) -> _Bound:
        if self._of is not None and self._of[0] is snapshot:
            return self._of[1]
        # Only targetRefs bind at a waypoint (waypoint.request says which); a Service ref
        # of any namespace may, for a Service this waypoint serves.
        policies = tuple(p for p in snapshot.authorizations if p.target_refs)
        authentications = tuple(r for r in snapshot.request_authentications if r.target_refs)
        uris = tuple(
            dict.fromkeys(
                rule.jwks_uri
                for r in authentications
                for rule in r.jwt_rules
                if rule.jwks_uri and not rule.jwks
            )
        )
        if self.jwks is not None:
            self.jwks.want(uris)
        bound = _Bound(policies, authentications, uris)
        self._of = (snapshot, bound)
        return bound

    def unsettled(self, snapshot: MeshSnapshot) -> bool:
        """Whether a key set ``snapshot``'s rules name by ``jwksUri`` was never fetched yet
        (a request then awaits :meth:`settle` before it is checked)."""
        uris = self._bound(snapshot).uris
        return bool(uris) and self.jwks is not None and self.jwks.untried(uris)

    async def settle(self, snapshot: MeshSnapshot) -> None:
        """The first fetch of each key set ``snapshot``'s rules name by ``jwksUri``."""
        if self.jwks is not None:
            await self.jwks.first_fetch(self._bound(snapshot).uris)

    def binds(self, snapshot: MeshSnapshot) -> bool:
        """Whether any policy or RequestAuthentication of ``snapshot`` may bind here."""
        bound = self._bound(snapshot)
        return bool(bound.policies or bound.authentications)

    def check(
        self,
        snapshot: MeshSnapshot,
        request: L7Request,
        headers: Sequence[tuple[str, str]],
        *,
        grpc: bool,
        request_id: str = "",
    ) -> Passed | LocalReply:
        """Let ``request`` (whose ``headers`` are as received) pass, or the reply refusing it;
        a refusal is logged with ``request_id`` (the access line's)."""
        bound = self._bound(snapshot)
        if not bound.policies and not bound.authentications:
            return Passed(list(headers), None, "no policy binds this waypoint")
        auth = None
        forwarded = list(headers)
        providers = providers_for(bound.authentications, self.scope, request.dst_service)
        if providers:
            keys = self.jwks.keys_for if self.jwks is not None else inline_keys
            result = authenticate(providers, headers, request.path, keys)
            if result.failure is not None:
                log.info("request_unauthenticated", src_identity=str(request.src_identity),
                         dst_service=request.dst_service, reason=result.reason,
                         request_id=request_id)  # fmt: skip
                realm = f"http://{request.host}{request.url_path}"
                return jwt_refused(result.failure, grpc=grpc, realm=realm)
            auth = result.auth
            forwarded = result.apply(headers)
            if auth is not None:
                request = replace(request, auth=auth)
        decision = evaluate_request(request, bound.policies)
        if not decision.allowed:
            log.info("request_denied", src_identity=str(request.src_identity),
                     dst_service=request.dst_service, policy=decision.policy,
                     reason=decision.reason, request_id=request_id)  # fmt: skip
            return rbac_denied(grpc=grpc, details=decision.details)
        return Passed(forwarded, auth, decision.reason)
