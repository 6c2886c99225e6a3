#!/usr/bin/env bash
# Install ambit from this source tree into a new virtual environment at PREFIX, with
# exactly the runtime dependencies that requirements.lock pins, and nothing else.
#
#   install/install-ambit.sh PREFIX            # e.g. /opt/ambit (what the Dockerfile runs)
#   PYTHON=python3.11 install/install-ambit.sh PREFIX
#
# The Dockerfile's build stage runs this and only this; tests/integration/test_install_script.py
# runs it into a fresh directory and then runs the installed `ambit`. Steps:
#   1. PYTHON -m venv --without-pip PREFIX: the venv gets no pip and no setuptools of
#      its own (Python 3.11's bundled ones are not in the lock); PYTHON's pip installs
#      into it (`pip --python`, pip >= 22.3).
#   2. the lock's runtime subset (install/lock_subset.py: the closure of pyproject's
#      dependencies over the lock's `# via` lines; the test extra stays out), --no-deps,
#      --require-hashes when the lock has hashes;
#   3. ambit itself, --no-deps, built from a clean copy of the tree (a stale build/ never
#      leaks in) with the build backend pinned by the lock (PIP_CONSTRAINT);
#   4. `pip check` (every dependency present), and every installed package at the
#      lock's version (lock_subset.py check); then it prints what it installed.
# Packages come from the package registry pip is configured for (and pip's cache);
# nothing else is fetched. Any failure stops it with a non-zero exit.
set -euo pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 PREFIX    (a new virtual environment for ambit, e.g. /opt/ambit)" >&2
    exit 2
fi
prefix=$1
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
lock=$src/requirements.lock
subset=$src/install/lock_subset.py

say() { echo "install-ambit: $*" >&2; }
fail() { say "error: $*"; exit 1; }

command -v "$python" >/dev/null || fail "no $python (set PYTHON to a Python 3.11+ interpreter)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "$python is $("$python" -V 2>&1), ambit needs Python 3.11+"
python=$("$python" -c 'import sys; print(sys.executable)')  # a path, as `pip --python` needs
"$python" -m pip --version >/dev/null 2>&1 ||
    fail "$python has no pip (Debian: apt-get install python3-pip)"
"$python" -m pip --python "$python" --version >/dev/null 2>&1 ||
    fail "$python's pip is older than 22.3 (no --python option): upgrade it"
"$python" -c 'import venv' 2>/dev/null ||
    fail "$python cannot make virtual environments (Debian: apt-get install python3-venv)"
if [ -e "$prefix" ] && [ -n "$(ls -A "$prefix" 2>/dev/null)" ]; then
    fail "$prefix exists and is not empty: install into a new directory"
fi

work=$(mktemp -d)
created=
cleanup() {
    local status=$?
    rm -rf "$work"
    # A half-made venv would only make the next attempt refuse the directory.
    if [ "$status" -ne 0 ] && [ -n "$created" ]; then rm -rf "$prefix"; fi
}
trap cleanup EXIT
trap 'say "error: \`$BASH_COMMAND\` failed (line $LINENO); nothing is left in $prefix"' ERR

"$python" "$subset" runtime "$lock" "$src/pyproject.toml" >"$work/runtime.txt"
"$python" "$subset" pins "$lock" >"$work/pins.txt"
hashes=()
if grep -q -- '--hash=' "$work/runtime.txt"; then
    hashes=(--require-hashes)
fi

say "creating the virtual environment $prefix with $("$python" -V 2>&1)"
created=yes
"$python" -m venv --without-pip "$prefix"
target=$prefix/bin/python
pip=("$python" -m pip --python "$target" --disable-pip-version-check --no-input)

say "installing $(grep -c '==' "$work/runtime.txt") locked runtime dependencies"
"${pip[@]}" install --quiet --no-deps ${hashes[@]+"${hashes[@]}"} -r "$work/runtime.txt"

# A clean copy: setuptools builds in the source directory, and reuses what a build/
# left there. Only what the wheel is made of (pyproject.toml's packages) and its README.
mkdir "$work/src"
packages=$("$python" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(" ".join(p.rstrip("*") for p in
          tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]))' \
    "$src/pyproject.toml")
cp "$src/pyproject.toml" "$src/README.md" "$work/src/"
for package in $packages; do
    [ -d "$src/$package" ] || fail "pyproject.toml names package $package, not in $src"
    tar -C "$src" --exclude=__pycache__ -cf - "$package" | tar -C "$work/src" -xf -
done
say "installing ambit ($packages) from $src"
PIP_CONSTRAINT=$work/pins.txt "${pip[@]}" install --quiet --no-deps "$work/src"

"${pip[@]}" check >&2 || fail "a dependency is missing (is the lock's # via graph complete?)"
"${pip[@]}" list --format=freeze >"$work/freeze.txt"
"$python" "$subset" check "$lock" <"$work/freeze.txt" ||
    fail "a package was installed that the lock does not pin"
[ -x "$prefix/bin/ambit" ] || fail "no $prefix/bin/ambit after the install"

say "installed into $prefix:"
cat "$work/freeze.txt"
