"""``install/install-ambit.sh``, the image's only install step, run as the Dockerfile runs
it but into a fresh directory: then the installed ``ambit`` runs every command's
``--help``, renders the CRDs, and imports ambit's packages from the venv, not from this
checkout; and what it installed is exactly the lock's runtime part.

It installs from the package registry pip is configured for (or pip's cache): a minute
or two, once per session (marker ``install``)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ambit.cli import build_parser
from tests.install_support import lock_subset

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "install" / "install-ambit.sh"
INSTALL_SECONDS = 600  # a cold pip cache on a slow registry; usually under a minute
COMMAND_SECONDS = 60
PACKAGES = ("ambit", "k8s", "mesh", "waypoint", "ztunnel", "ca")
# What pip prints when it cannot reach the registry (or the registry lacks a pin).
_OFFLINE = ("Could not find a version", "No matching distribution", "NewConnectionError",
            "Failed to establish", "Temporary failure in name resolution", "ProxyError",
            "Network is unreachable", "Max retries exceeded")  # fmt: skip


def _env() -> dict[str, str]:
    """This environment without what would let Python find the checkout instead."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    prefix = tmp_path_factory.mktemp("install") / "ambit"
    try:
        done = subprocess.run(
            [str(SCRIPT), str(prefix)],
            env={**_env(), "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=INSTALL_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SCRIPT.name} took over {INSTALL_SECONDS} s: is the package registry slow?")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-25:])
        hint = ""
        if any(sign in done.stderr for sign in _OFFLINE):
            hint = (
                "pip could not get a locked package: this test needs the package registry"
                " (or pip's cache holding every pin of requirements.lock).\n"
            )
        pytest.fail(f"{SCRIPT.name} exited {done.returncode}\n{hint}{tail}")
    yield prefix
    shutil.rmtree(prefix.parent, ignore_errors=True)  # about 100 MB; pytest keeps tmp dirs


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**_env(), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )


def _commands() -> list[tuple[str, ...]]:
    """Every command of the CLI and every subcommand below it, as argv prefixes."""
    out: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append((*prefix, name))
                    walk(sub, (*prefix, name))

    walk(build_parser(), ())
    return out


def test_every_command_of_the_installed_ambit_runs(venv: Path, tmp_path: Path) -> None:
    assert {("controlplane",), ("ztunnel",), ("waypoint", "run"), ("ca",), ("install",)} <= set(
        _commands()
    )
    top = _run(venv, str(venv / "bin" / "ambit"), "--help", cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    for command in _commands():
        done = _run(venv, str(venv / "bin" / "ambit"), *command, "--help", cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        assert f"usage: ambit {' '.join(command)}" in done.stdout, command


def test_the_installed_ambit_renders_the_crds(venv: Path, tmp_path: Path) -> None:
    done = _run(venv, "ambit", "install", "--crds", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    documents = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert documents
    assert {d["kind"] for d in documents} == {"CustomResourceDefinition"}


def test_the_packages_come_from_the_venv_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    names = ", ".join(PACKAGES)
    code = f"import {names}\nfor m in [{names}]: print(m.__file__)"
    done = _run(venv, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    site = (venv / "lib").resolve()
    files = [Path(line).resolve() for line in done.stdout.splitlines()]
    assert len(files) == len(PACKAGES)
    for file in files:
        assert file.is_relative_to(site), file
        assert not file.is_relative_to(ROOT), file


def test_what_is_installed_is_the_locks_runtime_part(venv: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
         "list", "--format=freeze", "--disable-pip-version-check"],
        env=_env(), capture_output=True, text=True, timeout=COMMAND_SECONDS, check=True,
    ).stdout.splitlines()  # fmt: skip
    entries = lock_subset.parse_lock((ROOT / "requirements.lock").read_text())
    assert lock_subset.check_installed(entries, listed, own="ambit") == []
    installed = {lock_subset.normalize(line.partition("==")[0]) for line in listed}
    assert "ambit" in installed
    # Nothing of the test extra, and no pip or setuptools inside the venv.
    assert not installed & {"pytest", "mypy", "ruff", "grpcio", "pip", "setuptools"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = lock_subset.runtime_entries(entries, lock_subset.runtime_roots(pyproject))
    assert installed - {"ambit"} == {e.name for e in runtime}
