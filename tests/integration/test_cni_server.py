"""The node agent's socket for the CNI plugin (``node.cni_server``) facing bad callers:
each gets an ``error`` answer and one log line, and the socket keeps answering the
plugin's good requests."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from node import cni_server
from node.cni_server import MAX_REQUEST, serve_cni


async def _add(request: Mapping[str, Any]) -> dict[str, Any]:
    return {"result": "skipped", "reason": f"seen {request['pod']['name']}"}


@pytest.fixture
async def socket_path() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ambcni-") as directory:  # short: a unix path
        path = Path(directory) / "cni.sock"
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_cni, path, {"ADD": _add})
            yield path
            nursery.cancel_scope.cancel()


async def ask(path: Path, raw: bytes, *, close_after: bool = True) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(raw)
        if close_after:
            await stream.send_eof()
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


GOOD = json.dumps({"command": "ADD", "pod": {"name": "web"}}).encode() + b"\n"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json\n", "request: not JSON"),
        (b"[1, 2]\n", "request: not a JSON object"),
        (b'{"command": "FLY"}\n', "unknown command 'FLY'"),
        (b"", "request: not JSON"),
        (b"{" + b" " * (MAX_REQUEST + 10), f"longer than {MAX_REQUEST} bytes"),
    ],
)
async def test_a_bad_request_gets_an_error_and_the_socket_keeps_serving(
    socket_path: Path, raw: bytes, says: str
) -> None:
    with capture_logs() as logs:
        answer = await ask(socket_path, raw)
    assert says in answer["error"]
    assert [e["event"] for e in logs] == ["cni_request_failed"]
    assert await ask(socket_path, GOOD) == {"result": "skipped", "reason": "seen web"}


async def test_a_caller_that_never_finishes_its_line_is_answered_and_let_go(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cni_server, "READ_TIMEOUT", 0.2)
    answer = await ask(socket_path, b'{"command": "ADD"', close_after=False)
    assert "no complete request within" in answer["error"]
    assert await ask(socket_path, GOOD) == {"result": "skipped", "reason": "seen web"}
