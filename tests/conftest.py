"""Shared fixtures: a test PKI and identities."""

from __future__ import annotations

import pytest

from mesh.identity import SpiffeId
from tests.pki import Pki, make_root

CLIENT_ID = SpiffeId("cluster.local", "default", "client")
SERVER_ID = SpiffeId("cluster.local", "default", "server")


@pytest.fixture(scope="session")
def root() -> Pki:
    return make_root()
