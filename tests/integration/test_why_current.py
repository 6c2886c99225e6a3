"""``ambit why`` right after a change answers for the new config: a real control plane
reading manifest files (:class:`k8s.files_source.FilesSource`, as local mode runs it)
publishes its snapshot on its API over real TLS with what it reflects
(``ambit-source-read``), and ``ambit why``'s reader waits until that is the files as
they are now."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from ambit.cmd_why import current_snapshot, read_snapshot
from ambit.control_api import ControlApi
from ca import CertificateAuthority
from k8s.controlplane import ControlPlane
from k8s.files_source import FilesSource, read_mark
from k8s.store import ObjectStore
from k8s.tap_server import TokenTapAuthenticator, serve_tap
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot
from mesh.tokens import TokenTable
from tests.pki import Pki

CP_ID = SpiffeId("cluster.local", "ambit-system", "ambit-controlplane")
TOKEN = "admin-token"
NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
"""
POLICY = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: NAME, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["9999"]}}]}]}
"""


def manifest(*policies: str) -> str:
    return NAMESPACE + "".join(POLICY.replace("NAME", p) for p in policies)


def policies(snapshot: MeshSnapshot) -> list[str]:
    return sorted(a.name for a in snapshot.authorizations)


@asynccontextmanager
async def control_plane(
    root: Pki, objects: Path, poll: float = 0.2
) -> AsyncIterator[tuple[ControlApi, trio.Nursery]]:
    """A control plane following ``objects`` (polled every ``poll`` s; local mode's 0.2)
    and its API: the snapshot, ``ambit why``'s."""
    plane = ControlPlane(CertificateAuthority.create())
    store = ObjectStore()
    cert = root.issue(CP_ID)
    authenticator = TokenTapAuthenticator(TokenTable({TOKEN: "admin"}))
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(FilesSource([objects]).run, store, poll=poll))
        nursery.start_soon(lambda: plane.serve_store(store, window=0.05))
        address = await nursery.start(
            lambda task_status: serve_tap(
                plane.config.taps, authenticator, certificate=lambda: cert, host="127.0.0.1",
                port=0, task_status=task_status,
                snapshot=lambda: plane.snapshot.to_json() if plane.snapshot else None,
                source_read=plane.source_read,
            )
        )  # fmt: skip
        yield ControlApi(address, CP_ID, root.bundle, TOKEN), nursery
        nursery.cancel_scope.cancel()


async def test_why_reads_the_config_of_the_files_as_they_are_now(
    root: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    cluster = objects / "cluster.yaml"
    cluster.write_text(manifest("first"))
    with trio.fail_after(30):
        async with control_plane(root, objects) as (api, _):
            assert policies(await current_snapshot(api, objects)) == ["first"]
            _, read = await read_snapshot(api)
            assert read == read_mark(FilesSource([objects]).signature())

            # Asked at once after the change (the control plane polls every 0.2 s): the
            # answer is the new config, never the one before.
            for n, names in enumerate([["first", "second"], ["second"], ["second", "third"]]):
                cluster.write_text(manifest(*names))
                os.utime(cluster, ns=(n, 10**18 + n))  # a new mtime even within a tick
                assert policies(await current_snapshot(api, objects)) == names

            # The same objects written again (a new mtime, nothing to translate): no wait
            # for a snapshot that never comes, and no warning.
            cluster.write_text(manifest("second", "third"))
            with trio.fail_after(5):
                assert policies(await current_snapshot(api, objects)) == ["second", "third"]
    assert capsys.readouterr().err == ""


async def test_a_control_plane_behind_the_files_is_named_behind(
    root: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A control plane that has not read the change (here: it looks once a minute) gives
    the config it serves, and ``why`` says on stderr that it is behind."""
    objects = tmp_path / "objects"
    objects.mkdir()
    (objects / "cluster.yaml").write_text(manifest("first"))
    with trio.fail_after(30):
        async with control_plane(root, objects, poll=60.0) as (api, _):
            assert policies(await current_snapshot(api, objects)) == ["first"]
            assert capsys.readouterr().err == ""
            (objects / "more.yaml").write_text(manifest("second"))
            assert policies(await current_snapshot(api, objects, settle=0.5)) == ["first"]
    err = capsys.readouterr().err
    assert "the control plane has not read the latest objects in 0.5s" in err, err
