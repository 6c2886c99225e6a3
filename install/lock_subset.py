"""What of ``requirements.lock`` an installed ambit needs, for ``install/install-ambit.sh``.

The lock (``make lock``: ``uv pip compile``) pins everything ``make test`` installs: the
runtime dependencies, the test extra (pytest, mypy, ruff, grpcio...) and the build backend.
An image needs only the first. Which lock entries those are follows from the lock itself:
each entry says which packages pulled it in (``# via``), so the runtime set is the closure of
``pyproject.toml``'s ``[project].dependencies`` over those lines. The install script
installs exactly that set with ``--no-deps`` (and ``--require-hashes`` when the lock has
hashes), then ambit with ``--no-deps``, then asks ``pip check`` whether anything is
missing, so the closure cannot silently fall short.

Standard library only: it runs before anything is installed, with the builder's Python.

    python install/lock_subset.py runtime requirements.lock pyproject.toml
    python install/lock_subset.py pins requirements.lock            # name==version lines
    python install/lock_subset.py check requirements.lock < freeze  # each line in the lock?
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503's normal form: ``PyJWT`` and ``prometheus_client`` as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    """One pinned package of the lock: its lines as written (hashes too), and ``via``."""

    name: str  # normalized
    version: str
    lines: tuple[str, ...]  # the requirement and its --hash continuation lines
    via: frozenset[str]  # normalized names, or "ambit (pyproject.toml)", "-"...

    @property
    def hashed(self) -> bool:
        return any("--hash=" in line for line in self.lines)


class LockError(ValueError):
    """The lock or the installed set is not what the install may proceed with."""


def parse_lock(text: str) -> dict[str, Entry]:
    """The lock's entries by normalized name (uv's and pip-tools' format)."""
    entries: dict[str, Entry] = {}
    current: tuple[str, str, list[str], set[str]] | None = None
    in_via = False

    def close() -> None:
        if current is not None:
            name, version, lines, via = current
            entries[name] = Entry(name, version, tuple(lines), frozenset(via))

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if not line[0].isspace() and not line.startswith("#"):
            close()
            match = _PIN.match(line)
            if match is None:
                raise LockError(f"not a pinned requirement (name==version): {line!r}")
            current = (normalize(match.group(1)), match.group(3), [line], set())
            in_via = False
            continue
        stripped = line.strip()
        if current is None:
            continue  # a header comment
        if stripped.startswith("--hash="):
            current[2].append(line)
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current[3].add(_via_name(rest))
        elif in_via and stripped.startswith("#"):
            current[3].add(_via_name(stripped.lstrip("#").strip()))
    close()
    return entries


def _via_name(text: str) -> str:
    if text.endswith("(pyproject.toml)") or text.startswith("-"):
        return text  # a root, not a package
    match = _NAME.match(text)
    return normalize(match.group(1)) if match else text


def runtime_roots(pyproject: Mapping[str, object]) -> set[str]:
    """The normalized names of ``[project].dependencies`` (extras as the lock resolved
    them: ``PyJWT[crypto]``'s cryptography is ``via pyjwt``)."""
    project = pyproject.get("project")
    dependencies = project.get("dependencies", []) if isinstance(project, dict) else []
    roots = set()
    for requirement in dependencies:
        match = _NAME.match(str(requirement))
        if match is None:
            raise LockError(f"cannot read the dependency {requirement!r} in pyproject.toml")
        roots.add(normalize(match.group(1)))
    return roots


def runtime_entries(entries: Mapping[str, Entry], roots: Iterable[str]) -> list[Entry]:
    """The lock's entries an installed ambit needs: the roots and, repeatedly, whatever a
    needed package pulled in; in the lock's order."""
    needed = set(roots)
    missing = sorted(needed - entries.keys())
    if missing:
        raise LockError(f"not in the lock: {', '.join(missing)} (run `make lock`)")
    grew = True
    while grew:
        grew = False
        for entry in entries.values():
            if entry.name not in needed and entry.via & needed:
                needed.add(entry.name)
                grew = True
    return [e for e in entries.values() if e.name in needed]


def check_installed(entries: Mapping[str, Entry], freeze: Iterable[str], own: str) -> list[str]:
    """Each line of ``pip freeze`` that is not pinned by the lock at that version (``own``,
    the project itself, excepted); empty when all are."""
    wrong = []
    for line in freeze:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_match = _NAME.match(line)
        name = normalize(name_match.group(1)) if name_match else line
        if name == normalize(own):
            continue
        pin = _PIN.match(line)
        entry = entries.get(name)
        if pin is None or entry is None or entry.version != pin.group(3):
            locked = f"the lock has {entry.version}" if entry else "not in the lock"
            wrong.append(f"{line} ({locked})")
    return wrong


def main(argv: list[str]) -> int:
    usage = "usage: lock_subset.py runtime LOCK PYPROJECT | pins LOCK | check LOCK < FREEZE"
    if len(argv) < 2:
        print(usage, file=sys.stderr)
        return 2
    command, lock_path = argv[0], Path(argv[1])
    try:
        entries = parse_lock(lock_path.read_text())
        if command == "runtime" and len(argv) == 3:
            pyproject = tomllib.loads(Path(argv[2]).read_text())
            for entry in runtime_entries(entries, runtime_roots(pyproject)):
                print("\n".join(entry.lines).rstrip(" \\"))
        elif command == "pins" and len(argv) == 2:
            for entry in entries.values():
                print(f"{entry.name}=={entry.version}")
        elif command == "check" and len(argv) == 2:
            wrong = check_installed(entries, sys.stdin, own="ambit")
            if wrong:
                print(f"installed but not locked: {'; '.join(wrong)}", file=sys.stderr)
                return 1
        else:
            print(usage, file=sys.stderr)
            return 2
    except (OSError, LockError, tomllib.TOMLDecodeError) as exc:
        print(f"lock_subset.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
