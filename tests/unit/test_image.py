"""The ambit image, as far as it can be checked without a container runtime: the Dockerfile
installs with ``install/install-ambit.sh`` and nothing else, runs what the CLI has, as the
user the manifests expect, under the name ``make image`` tags and the manifests pull; and
``install/lock_subset.py``, which picks the lock's runtime part for that script.
(``tests/integration/test_install_script.py`` runs the script itself.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ambit.cli import build_parser
from k8s import install
from k8s.waypoint_deployer import DeployerSettings, run_command
from tests.install_support import lock_subset
from tests.k8s_builders import gateway

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "install/install-ambit.sh"
PREFIX = "/opt/ambit"


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM's stage
    keyword: str  # upper case
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    stage, pending = -1, ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, " ".join(args.split())))
    return out


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_build_stage_installs_with_the_script_and_nothing_else() -> None:
    instructions = dockerfile()
    runs = [i for i in instructions if i.keyword == "RUN"]
    installs = [i for i in runs if SCRIPT in i.args]
    assert [i.args for i in installs] == [f"{SCRIPT} {PREFIX}"]
    assert installs[0].stage == 0
    # No second install path: pip is the script's business alone.
    assert not [i for i in runs if re.search(r"\bpip\b|setup\.py|ensurepip", i.args)]
    copies = [i for i in instructions if i.keyword == "COPY" and i.stage == 1]
    assert f"--from=build {PREFIX} {PREFIX}" in [c.args for c in copies]


def test_both_stages_have_the_same_python_base() -> None:
    """The venv's python is a link into the base image: the runtime stage must be the same."""
    froms = [i.args for i in dockerfile() if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    args = [i.args for i in dockerfile() if i.keyword == "ARG" and i.stage == -1]
    assert args == ["PYTHON_IMAGE=python:3.11-slim-bookworm"]
    requires = _pyproject()["project"]["requires-python"]  # type: ignore[index]
    assert requires == ">=3.11"


def test_the_image_runs_as_the_user_the_manifests_run_as() -> None:
    runtime = [i for i in dockerfile() if i.stage == 1]
    assert [i.args for i in runtime if i.keyword == "USER"] == [
        f"{install.RUN_AS}:{install.RUN_AS}"
    ]
    spec = install.controlplane_deployment(install.Values())["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == install.RUN_AS
    (useradd,) = [i.args for i in runtime if i.keyword == "RUN"]
    assert f"--uid {install.RUN_AS}" in useradd
    assert f"--gid {install.RUN_AS}" in useradd
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert f"PATH={PREFIX}/bin:" in env


def test_the_entrypoint_is_the_ambit_command_and_its_default_parses() -> None:
    runtime = {i.keyword: i.args for i in dockerfile() if i.stage == 1}
    entrypoint, cmd = json.loads(runtime["ENTRYPOINT"]), json.loads(runtime["CMD"])
    assert entrypoint == ["ambit"]
    scripts = _pyproject()["project"]["scripts"]  # type: ignore[index]
    assert scripts["ambit"] == "ambit.cli:main"
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(cmd)
    assert exited.value.code == 0


def _ambit_argv(command: list[str]) -> list[str]:
    """What follows the program in a container's command: ``ambit ...`` or
    ``python -m ambit.cli ...``."""
    if command[0] == "ambit":
        return command[1:]
    assert command[1:3] == ["-m", "ambit.cli"], command
    return command[3:]


@pytest.mark.parametrize("component", ["controlplane", "waypoint"])
def test_the_commands_the_manifests_run_are_commands_of_the_cli(component: str) -> None:
    if component == "controlplane":
        deployment = install.controlplane_deployment(install.Values())
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["command"]
    else:
        command = run_command(gateway("waypoint", "shop"), DeployerSettings())
    args = build_parser().parse_args(_ambit_argv(command))
    assert callable(args.run)
    assert args.command == component


def _makefile_image_tag() -> str:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # Not a parent make's command-line variables (MAKEFLAGS would pass an IMAGE=... on).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    recipe = subprocess.run(
        ["make", "-s", "-n", "image"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    (build,) = [line for line in recipe.splitlines() if line.startswith("docker build")]
    match = re.search(r"-t (\S+)", build)
    assert match is not None, build
    assert f"--build-arg VERSION={install.VERSION} " in build
    return match.group(1)


def test_make_image_tags_the_image_the_manifests_and_charts_pull() -> None:
    tag = _makefile_image_tag()
    assert tag == install.Values().image == f"ambit:{install.VERSION}"
    values = yaml.safe_load((ROOT / "charts/ambit-control/values.yaml").read_text())
    assert values["image"] == tag
    for chart in ("ambit-base", "ambit-control"):
        meta = yaml.safe_load((ROOT / "charts" / chart / "Chart.yaml").read_text())
        assert meta["appVersion"] == tag.rpartition(":")[2]
    runtime = [i.args for i in dockerfile() if i.keyword == "ARG" and i.stage == 1]
    assert f"VERSION={install.VERSION}" in runtime


def test_the_build_context_has_what_the_script_reads() -> None:
    """.dockerignore admits only what the install reads: every package pyproject.toml
    names, the lock, the script and its helper."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    find = _pyproject()["tool"]["setuptools"]["packages"]["find"]  # type: ignore[index]
    packages = {p.rstrip("*") for p in find["include"]}
    assert admitted == {"pyproject.toml", "README.md", "requirements.lock", "install"} | packages


# install/lock_subset.py

LOCK = """\
# This file was autogenerated by uv via the following command:
attrs==26.1.0
    # via
    #   outcome
    #   pytest-ish
outcome==1.3.0.post0 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via trio
pytest-ish==9.2.0
    # via ambit (pyproject.toml)
setuptools==84.2.1
trio==0.35.0
    # via ambit (pyproject.toml)
PyJWT==2.15.1
    # via ambit (pyproject.toml)
cryptography==51.0.1
    # via
    #   ambit (pyproject.toml)
    #   pyjwt
"""


def test_the_runtime_subset_is_the_closure_of_the_dependencies() -> None:
    entries = lock_subset.parse_lock(LOCK)
    roots = lock_subset.runtime_roots(
        {"project": {"dependencies": ["trio>=0.27", "PyJWT[crypto]>=2.8"]}}
    )
    assert roots == {"trio", "pyjwt"}
    chosen = lock_subset.runtime_entries(entries, roots)
    assert [e.name for e in chosen] == ["attrs", "outcome", "trio", "pyjwt", "cryptography"]
    outcome = entries["outcome"]
    assert outcome.hashed
    assert outcome.version == "1.3.0.post0"
    assert outcome.lines[1].strip() == "--hash=sha256:aaaa \\"
    assert not entries["setuptools"].via


def test_a_dependency_the_lock_lacks_is_refused() -> None:
    entries = lock_subset.parse_lock(LOCK)
    with pytest.raises(lock_subset.LockError, match="not in the lock: h2"):
        lock_subset.runtime_entries(entries, {"trio", "h2"})


def test_the_installed_set_is_checked_against_the_lock() -> None:
    entries = lock_subset.parse_lock(LOCK)
    freeze = ["ambit==0.1.0", "attrs==26.1.0", "PyJWT==2.15.1", "trio==0.34.0", "six==1.0"]
    assert lock_subset.check_installed(entries, freeze, own="ambit") == [
        "trio==0.34.0 (the lock has 0.35.0)",
        "six==1.0 (not in the lock)",
    ]


def test_the_real_lock_keeps_the_test_extra_out_of_the_image() -> None:
    entries = lock_subset.parse_lock((ROOT / "requirements.lock").read_text())
    roots = lock_subset.runtime_roots(_pyproject())
    names = {e.name for e in lock_subset.runtime_entries(entries, roots)}
    assert {"trio", "h2", "cryptography", "kubernetes-asyncio", "aiohttp", "greenlet"} <= names
    assert not names & {"pytest", "mypy", "ruff", "grpcio", "trustme", "setuptools"}
