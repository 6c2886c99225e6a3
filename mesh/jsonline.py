"""One JSON object on one line over a stream: the node agent's socket for the CNI plugin
speaks it (docs/node.md, "Plugin to agent"), served by :mod:`node.cni_server` and asked
by local mode's runtime (:mod:`k8s.localcni`)."""

from __future__ import annotations

import json
from typing import Any

import trio


async def receive_object(stream: trio.abc.ReceiveStream, limit: int) -> dict[str, Any]:
    """The JSON object on the first line of ``stream`` (or on all of it, if it ends first).
    ValueError when the line is longer than ``limit`` bytes, is not JSON, or not an
    object."""
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit and b"\n" not in data[: limit + 1]:
            raise ValueError(f"a line longer than {limit} bytes")
    try:
        doc = json.loads(bytes(data).split(b"\n", 1)[0])
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc
