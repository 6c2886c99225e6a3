"""Shared fixtures: a test PKI and identities, a short directory for unix sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.identity import SpiffeId
from tests.pki import Pki, make_root

CLIENT_ID = SpiffeId("cluster.local", "default", "client")
SERVER_ID = SpiffeId("cluster.local", "default", "server")


@pytest.fixture(scope="session")
def root() -> Pki:
    return make_root()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path has at most 107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="ambs-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
