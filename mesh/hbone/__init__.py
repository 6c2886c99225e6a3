"""HBONE: TCP tunnelled as HTTP/2 CONNECT streams inside mutual TLS.

- :mod:`mesh.hbone.frames`: the frames the tunnel reads and writes itself
  (DATA and WINDOW_UPDATE), pure functions.
- :mod:`mesh.hbone.connection`: one HTTP/2 connection and its streams. h2 keeps
  HEADERS, SETTINGS, RST_STREAM, PING and GOAWAY; the tunnel owns DATA and all
  flow control (see DESIGN.md, "The hot path").
- :mod:`mesh.hbone.server`: the listener that hands CONNECT streams to a handler.
- :mod:`mesh.hbone.client`: the connection pool that opens CONNECT streams.
"""

from mesh.hbone.connection import HboneConnection
from mesh.hbone.settings import (
    HboneConnectionError,
    HboneError,
    HboneSettings,
    HboneStreamRefused,
)
from mesh.hbone.stream import HboneRequest, HboneStream

__all__ = [
    "HboneConnection",
    "HboneConnectionError",
    "HboneError",
    "HboneRequest",
    "HboneSettings",
    "HboneStream",
    "HboneStreamRefused",
]
