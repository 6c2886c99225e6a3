"""``install/lock_subset.py`` as a module for the tests (it is a script beside
``install/install-ambit.sh``, not part of any package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_subset", ROOT / "install/lock_subset.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_subset"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lock_subset = _load()
