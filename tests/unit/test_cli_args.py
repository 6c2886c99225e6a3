"""The ``ambit`` command line as a kubectl user types it, and as a shell pipes it: the name
after the namespace flag, and a reader that leaves early (``| head``) without a traceback.
Run as the real command, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

AMBIT = [sys.executable, "-m", "ambit.cli"]


def test_the_name_may_follow_the_namespace_flag(tmp_path: Path) -> None:
    """``get services -n NS NAME``, as kubectl takes it: read as the name (here the call
    then says no cluster answers), and a second stray word is still refused."""
    state = ["--state-dir", str(tmp_path)]
    named = subprocess.run([*AMBIT, "get", "services", "-n", "shop", "web", *state],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert named.returncode != 0
    assert "unrecognized arguments" not in named.stderr
    assert "no local cluster answers" in named.stderr
    stray = subprocess.run([*AMBIT, "get", "services", "web", "more", "-n", "shop", *state],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stray.returncode == 2
    assert "unrecognized arguments: more" in stray.stderr


def test_a_reader_that_left_is_no_traceback() -> None:
    """``ambit install --crds | head -1``: the pipe's reader is gone before the output is
    written; the command ends as one killed by SIGPIPE would (141), saying nothing."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([*AMBIT, "install", "--crds"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr
