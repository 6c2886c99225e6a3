"""The Kubernetes source's edges that need no API server: credentials (in-cluster with a
rotating token, a kubeconfig), and an API server that cannot be reached (nothing is
listed, so the store's gate stays closed). Watching a real API server is in
tests/kube/."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from k8s.sources.driver import KubernetesSource
from k8s.sources.kubernetes import (
    KubeSourceConfig,
    KubeSourceError,
    TokenFile,
    configure,
)
from k8s.store import ObjectStore
from mesh.backoff import Backoff
from tests.pki import make_root


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(path: Path, server: str, token: str = "admin-token") -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{server}", insecure-skip-tls-verify: true}}
users:
- name: admin
  user: {{token: {token}}}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
"""
    )
    return path


async def bearer(client: Any) -> str:
    headers: dict[str, str] = {}
    await trio_asyncio.aio_as_trio(client.update_params_for_auth)(headers, [], ["BearerToken"])
    return headers["authorization"]


async def test_in_cluster_token_is_read_again_when_the_kubelet_rotates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    (tmp_path / "ca.crt").write_bytes(make_root().bundle.pem())
    token = tmp_path / "token"
    token.write_text("first\n")
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            client = await trio_asyncio.aio_as_trio(configure)(
                KubeSourceConfig(service_account_dir=tmp_path)
            )
            try:
                assert client.configuration.host == "https://10.96.0.1:443"
                assert await bearer(client) == "Bearer first"
                # The kubelet writes a new file and swaps it in.
                (tmp_path / "token.new").write_text("second")
                os.replace(tmp_path / "token.new", token)
                assert await bearer(client) == "Bearer second"
            finally:
                await trio_asyncio.aio_as_trio(client.close)()


def test_token_file_keeps_the_last_token_while_the_file_is_unreadable(tmp_path: Path) -> None:
    class Configuration:
        api_key: dict[str, str] = {}

    token = tmp_path / "token"
    token.write_text("one")
    hook, conf = TokenFile(token), Configuration()
    hook.refresh(conf)  # type: ignore[arg-type]
    token.unlink()
    hook.refresh(conf)  # type: ignore[arg-type]
    assert conf.api_key["BearerToken"] == "Bearer one"


async def test_a_kubeconfig_gives_the_server_and_token(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", "https://127.0.0.1:6443")
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            client = await trio_asyncio.aio_as_trio(configure)(KubeSourceConfig(kubeconfig=path))
            try:
                assert client.configuration.host == "https://127.0.0.1:6443"
                assert await bearer(client) == "Bearer admin-token"
            finally:
                await trio_asyncio.aio_as_trio(client.close)()


@pytest.mark.parametrize("content", [None, "not: [a kubeconfig"])
async def test_a_missing_or_bad_kubeconfig_is_an_error_that_says_what_to_do(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "config"
    if content is not None:
        path.write_text(content)
    with trio.fail_after(10):
        async with trio_asyncio.open_loop():
            with pytest.raises(KubeSourceError, match="kubeconfig"):
                await trio_asyncio.aio_as_trio(configure)(KubeSourceConfig(kubeconfig=path))


async def test_an_unreachable_api_server_lists_nothing_so_nothing_is_published(
    tmp_path: Path,
) -> None:
    path = kubeconfig(tmp_path / "config", f"https://127.0.0.1:{closed_port()}")
    store = ObjectStore()
    config = KubeSourceConfig(
        kubeconfig=path, backoff=Backoff(initial=0.01, maximum=0.05, jitter=False)
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(KubernetesSource(config).run, store)
            await trio.sleep(0.3)  # many refused attempts per resource
            assert store.unlisted() == list(store.kinds)
            assert store.objects() == []
            nursery.cancel_scope.cancel()
