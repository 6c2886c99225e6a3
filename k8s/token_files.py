"""Bearer tokens the control plane accepts, from files it watches: the CA's and the config
stream's (nodes' and service accounts', ``--tokens-file``) and the tap API's
(``--tap-tokens-file``), each file a JSON object ``{"caller": "token"}`` re-read when it
changes; and the tap API (:mod:`k8s.tap_server`, ``ambit why``'s snapshot too) with the
authenticator its deployment gives it (:func:`serve_tap_api`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from ca.kube import KubeRequests
from k8s.controlplane import ControlPlane
from mesh.tokens import TokenTable

if TYPE_CHECKING:
    from k8s.tap_server import Page

log = structlog.get_logger("k8s.controlplane_process")


class TokensFile:
    """Bearer tokens from a JSON file ``{"caller": "token"}``, added to a
    :class:`TokenTable` as they appear. A caller is a node's name (a ztunnel) or a
    service account, ``system:serviceaccount:NS:SA`` (a waypoint: what Kubernetes'
    TokenReview would say of its token). A token once loaded stays valid for this
    process's life."""

    def __init__(self, path: Path | None, table: TokenTable) -> None:
        self.path = path
        self.table = table
        self._loaded: dict[str, str] = {}
        self._mtime = -1

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._mtime:
                return
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("tokens_file_unreadable", path=str(self.path), reason=str(exc))
            return
        self._mtime = mtime
        if not isinstance(data, dict):
            log.warning("tokens_file_unreadable", path=str(self.path), reason="not an object")
            return
        for caller, token in data.items():
            if isinstance(token, str) and token and self._loaded.get(str(caller)) != token:
                self.table.add(token, str(caller))
                self._loaded[str(caller)] = token


async def watch_tokens(tokens: TokensFile, poll: float) -> None:
    while True:
        tokens.reload()
        await trio.sleep(poll)


async def serve_tap_api(
    plane: ControlPlane,
    tokens_file: Path | None,
    api: KubeRequests | None = None,
    *,
    host: str,
    port: int,
    trust_domain: str,
    poll: float,
    pages: Mapping[str, Page] | None = None,
    task_status: trio.TaskStatus[int],
) -> None:
    """``ambit tap``'s API (:mod:`k8s.tap_server`, and ``ambit why``'s snapshot) under the
    control plane's own certificate, for the tokens of ``tokens_file`` (a table
    of its own: a tap token is worth nothing at the CA or on the config stream) or, without
    that file on Kubernetes, for callers the API server says may (:mod:`k8s.tap_access`:
    TokenReview, then SubjectAccessReview); ``pages`` are served beside them
    (:mod:`k8s.dashboard`)."""
    from ca import LocalSigner
    from k8s.tap_access import KubeTapAuthenticator
    from k8s.tap_server import TapAuthenticator, TokenTapAuthenticator, serve_tap
    from mesh.certs import open_certificate_manager
    from mesh.identity import WorkloadCertificate, control_plane_identity

    tokens = TokensFile(tokens_file, TokenTable())
    tokens.reload()
    authenticator: TapAuthenticator = (
        KubeTapAuthenticator(api)
        if api is not None and tokens_file is None
        else TokenTapAuthenticator(tokens.table)
    )
    identity = control_plane_identity(trust_domain)
    signer = LocalSigner(plane.authority, caller="controlplane")
    async with open_certificate_manager(signer) as certs, trio.open_nursery() as nursery:
        await certs.fetch_now(identity)

        def current() -> WorkloadCertificate:
            cert = certs.get(identity)
            assert cert is not None  # fetched above; renewals replace it
            return cert

        nursery.start_soon(watch_tokens, tokens, poll)
        bound = await nursery.start(
            partial(serve_tap, plane.config.taps, authenticator, certificate=current,
                    host=host, port=port,
                    snapshot=lambda: plane.snapshot.to_json() if plane.snapshot else None,
                    source_read=plane.source_read,
                    pages=pages)
        )  # fmt: skip
        task_status.started(bound[1])
