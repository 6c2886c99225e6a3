"""HBONE: TCP tunnelled as HTTP/2 CONNECT streams inside mutual TLS, on one
HTTP/2 engine that carries any request over any byte stream.

- :mod:`mesh.hbone.frames`: the frames the engine reads and writes itself
  (DATA and WINDOW_UPDATE), pure functions.
- :mod:`mesh.hbone.window`: receive flow control, sans-IO.
- :mod:`mesh.hbone.stream`: one HTTP/2 stream as a ``HalfCloseableStream``,
  its :class:`StreamState`, and the narrow protocol it needs of its connection.
- :mod:`mesh.hbone.engine`: frames, flow control and the stream table; h2
  keeps HEADERS, SETTINGS, RST_STREAM and PING; the engine owns DATA and all
  flow control (its docstring lists the hot-path invariants).
- :mod:`mesh.hbone.goaway`: GOAWAY both ways, sans-IO (graceful two-phase).
- :mod:`mesh.hbone.transport`: the byte stream under a connection: TLS, or
  any ``trio.abc.Stream`` (memory streams, h2c, HTTP/2 inside HBONE).
- :mod:`mesh.hbone.writer`: the one writer task and its batching.
- :mod:`mesh.hbone.connection`: the engine with its Trio tasks; pool questions.
- :mod:`mesh.hbone.request`: a CONNECT request as HBONE's server sees it.
- :mod:`mesh.hbone.server`: the listener that hands CONNECT streams to a handler.
- :mod:`mesh.hbone.client`: the connection pool that opens CONNECT streams.
"""

from mesh.hbone.connection import HboneConnection, Http2Connection
from mesh.hbone.request import HboneRequest
from mesh.hbone.settings import (
    HboneConnectionError,
    HboneError,
    HboneRetryableError,
    HboneSettings,
    HboneStreamRefused,
    HboneStreamTimeout,
)
from mesh.hbone.stream import H2Stream, HboneStream, StreamState

__all__ = [
    "H2Stream",
    "HboneConnection",
    "HboneConnectionError",
    "HboneError",
    "HboneRequest",
    "HboneRetryableError",
    "HboneSettings",
    "HboneStream",
    "HboneStreamRefused",
    "HboneStreamTimeout",
    "Http2Connection",
    "StreamState",
]
