"""A proxy's token file read again as it rotates (:class:`mesh.tokens.TokenFile`), the
way the kubelet rotates a projected service-account token: a new timestamped directory,
then the ``..data`` symlink swapped to it, the token file itself a symlink through it."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mesh.tokens import TokenFile, current


def project(volume: Path, token: str, generation: int) -> Path:
    """Write ``token`` as the kubelet does (atomically, through ``..data``); the path a
    pod reads."""
    data = volume / f"..2026_12_06_{generation:04d}"
    data.mkdir()
    (data / "token").write_text(token + "\n")
    link = volume / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, volume / "..data")  # the swap: readers see old or new, never neither
    path = volume / "token"
    if not path.is_symlink():
        path.symlink_to("..data/token")
    return path


def events(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [e["event"] for e in logs]


def test_a_rotated_token_is_shown_from_then_on(tmp_path: Path) -> None:
    path = project(tmp_path, "first", 1)
    token = TokenFile(path)
    assert current(token) == "first"
    project(tmp_path, "second", 2)
    assert current(token) == "second"
    assert current(token) == "second"


def test_a_file_that_cannot_be_read_keeps_the_last_token_with_one_warning(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("first")
    token = TokenFile(path)
    with capture_logs() as logs:
        path.unlink()
        assert [token(), token()] == ["first", "first"]
        path.write_text("")  # an empty file is not a token either
        assert token() == "first"
        path.write_text("second")
        assert token() == "second"
    assert events(logs) == ["token_file_unreadable", "token_file_read_again"]


def test_a_missing_or_empty_file_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TokenFile(tmp_path / "absent")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        TokenFile(tmp_path / "empty")


def test_a_plain_string_is_its_own_current_token() -> None:
    assert current("fixed") == "fixed"
