"""A new user's shell for tests/kube: ``bash -o pipefail -c COMMAND`` with ``ambit`` (this
checkout's, through ``python -m ambit``) and the ``kubectl`` ``make kube`` built first on
``PATH``, ``KUBECONFIG`` the harness's admin kubeconfig and kubectl's discovery cache
fresh, as on a machine that never ran kubectl. :func:`doc_commands` and
:func:`doc_blocks` read the commands and manifests a document gives, so that a test
runs exactly those."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.kube.cluster import REPO, Cluster, kubectl

COMMAND_SECONDS = 120.0  # kubectl delete waits for a namespace's finalization


@dataclass(frozen=True)
class Done:
    """What a user sees of a command: its exit code and its output."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def __str__(self) -> str:
        return f"$ {self.command}\n(exit {self.returncode})\n{self.stdout}{self.stderr}"


@dataclass(frozen=True)
class Shell:
    """Where the commands run (``cwd``, which holds the files a user writes) and with
    what environment."""

    cwd: Path
    env: dict[str, str]

    async def run(self, command: str, *, seconds: float = COMMAND_SECONDS) -> Done:
        with trio.fail_after(seconds):
            done = await trio.run_process(
                ["bash", "-o", "pipefail", "-c", command], cwd=self.cwd, env=self.env,
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        return Done(command, done.returncode, done.stdout.decode(), done.stderr.decode())

    async def ok(self, command: str, *, seconds: float = COMMAND_SECONDS) -> Done:
        """Run ``command``; it must exit 0."""
        done = await self.run(command, seconds=seconds)
        assert done.returncode == 0, str(done)
        return done


def user_shell(cluster: Cluster, home: Path) -> Shell:
    """A shell in ``home`` (its ``bin`` first on ``PATH``, its own kubectl cache)."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    ambit = bin_dir / "ambit"
    ambit.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ambit "$@"\n')
    ambit.chmod(0o755)
    (bin_dir / "kubectl").symlink_to(kubectl())
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(REPO),
        "KUBECONFIG": str(cluster.kubeconfig),
        "KUBECACHEDIR": str(home / "kube-cache"),
    }
    return Shell(cwd=home, env=env)


def doc_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in a Markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.M | re.S)


def doc_commands(path: Path) -> list[str]:
    """Every command of the document's ``sh`` blocks, continuation lines joined (as the
    shell joins them) and comments dropped."""
    commands: list[str] = []
    for block in doc_blocks(path, "sh"):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands
