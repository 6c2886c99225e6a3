"""``mesh.commands.run_command``: a removal whose object is already gone is not a
failure with ``ok_if_gone`` (a veth that vanished with its netns between the lookup and
the delete says "No such device"), and is one without it."""

from __future__ import annotations

import pytest

from mesh.commands import CommandFailed, run_command

GONE = ["sh", "-c", "echo 'RTNETLINK answers: No such device' >&2; exit 2"]


@pytest.mark.trio
async def test_a_link_already_gone_is_fine_only_when_asked() -> None:
    assert await run_command(GONE, ok_if_gone=True) == ""
    with pytest.raises(CommandFailed, match="No such device"):
        await run_command(GONE)
