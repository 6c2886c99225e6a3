"""Installing ambit-cni on a node, for the node agent: the plugin's binary (this
repository's ``node/cni_plugin.py`` with a ``python3`` shebang), its kubeconfig,
and its entry appended to the primary CNI config; ``uninstall`` puts that config
back byte for byte. ``keep_installed`` waits for the primary CNI's config and puts
ambit-cni back whenever the file or the binary is rewritten or removed.

Every write is atomic (a temporary file in the same directory, renamed over the
target). The config as found (name and bytes) is kept in the state directory
before the edited one is written; after a rewrite by the primary CNI, the new file
is the one remembered. Without that record (a lost state directory) ``uninstall``
removes ambit-cni's entry from the JSON instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import structlog
import trio

from mesh.files import write_atomically
from node import cni_plugin
from node.cni_config import (
    PLUGIN_TYPE,
    CniConfigError,
    PluginKubeconfig,
    PluginSettings,
    candidate_names,
    first_network,
    is_installed,
    parse_network,
    shebanged,
    with_plugin,
    without_plugin,
)

log = structlog.get_logger("node.cni")

STATE_RECORD = "cni-config.json"  # {"original": name, "installed": name, "sha256": ...}
STATE_ORIGINAL = "cni-config.original"  # the primary config's bytes as found
POLL_SECONDS = 0.5


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def plugin_source() -> Path:
    """The plugin's one file in this installation."""
    return Path(cni_plugin.__file__)


def install_binary(src: Path, bin_dir: Path) -> bool:
    """``bin_dir/ambit-cni``: the plugin's source ``src`` (``plugin_source()``, this
    installation's) with a ``#!/usr/bin/env python3`` line, mode 0755 (the node needs
    a python3 >= 3.8 on PATH). Whether it was (re)written; nothing is written when it
    is current."""
    content = shebanged(src.read_bytes())
    target = bin_dir / PLUGIN_TYPE
    if _read(target) == content and os.stat(target).st_mode & 0o777 == 0o755:
        return False
    bin_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(target, content, 0o755)
    return True


def write_plugin_kubeconfig(path: Path, kubeconfig: PluginKubeconfig) -> bool:
    """The plugin's kubeconfig (JSON, mode 0600: it may hold a token); whether it
    was (re)written."""
    content = kubeconfig.document()
    if _read(path) == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, content, 0o600)
    return True


def find_primary(conf_dir: Path) -> tuple[str, bytes] | None:
    """The file the container runtime uses, as (name, bytes); None before the
    primary CNI has written one."""
    try:
        names = candidate_names(os.listdir(conf_dir))
    except FileNotFoundError:
        return None
    files = []
    for name in names:
        try:
            data = (conf_dir / name).read_bytes()
            age = time.time() - os.stat(conf_dir / name).st_mtime
        except (FileNotFoundError, IsADirectoryError):
            continue
        files.append((name, data, age))
    return first_network(files)


class Installed(Enum):
    WAITING = "waiting"  # no primary config yet
    CURRENT = "current"  # ambit-cni already last: nothing written
    INSTALLED = "installed"  # the primary config as found is remembered and edited


def install_config(conf_dir: Path, state_dir: Path, settings: PluginSettings) -> Installed:
    """ambit-cni as the last plugin of the primary config, idempotent. A file
    without ambit-cni is remembered as found (state dir) before it is edited."""
    return _install_config(conf_dir, state_dir, settings)[0]


def _install_config(
    conf_dir: Path, state_dir: Path, settings: PluginSettings
) -> tuple[Installed, str | None]:
    """:func:`install_config`, and the name of the file that holds ambit-cni now."""
    found = find_primary(conf_dir)
    if found is None:
        return Installed.WAITING, None
    name, data = found
    entry = settings.entry()
    network = parse_network(data)
    assert network is not None
    if is_installed(network, entry):
        return Installed.CURRENT, name
    new_name, new_data = with_plugin(name, data, entry)
    state_dir.mkdir(parents=True, exist_ok=True)
    if without_plugin(data) is None:  # as the primary CNI wrote it: the one to restore
        write_atomically(state_dir / STATE_ORIGINAL, data, 0o600)
        original: str | None = name
    else:  # ambit's own edit (other settings): what it was edited from, if known
        record = _record(state_dir)
        original = record["original"] if record is not None else None
    digest = hashlib.sha256(new_data).hexdigest()
    record = {"original": original, "installed": new_name, "sha256": digest}
    write_atomically(state_dir / STATE_RECORD, json.dumps(record).encode(), 0o600)
    write_atomically(conf_dir / new_name, new_data, _mode(conf_dir / name))
    if new_name != name:  # a .conf now a .conflist: the runtime must not read both
        (conf_dir / name).unlink(missing_ok=True)
    return Installed.INSTALLED, new_name


def uninstall_config(conf_dir: Path, state_dir: Path) -> bool:
    """The primary config as found, byte for byte, when the file is still the one
    ambit wrote; otherwise (rewritten since, or no record) the file without
    ambit-cni's entry. Whether anything was written. The record is removed."""
    record = _record(state_dir)
    changed = False
    if record is not None:
        installed = conf_dir / str(record["installed"])
        current = _read(installed)
        original = _read(state_dir / STATE_ORIGINAL)
        is_ours = current is not None and hashlib.sha256(current).hexdigest() == record["sha256"]
        if is_ours and record["original"] is not None and original is not None:
            restored = conf_dir / record["original"]
            write_atomically(restored, original, _mode(installed))
            if restored != installed:
                installed.unlink(missing_ok=True)
            changed = True
    if not changed:
        found = find_primary(conf_dir)
        stripped = without_plugin(found[1]) if found is not None else None
        if found is not None and stripped is not None:
            write_atomically(conf_dir / found[0], stripped, _mode(conf_dir / found[0]))
            changed = True
    for name in (STATE_RECORD, STATE_ORIGINAL):
        (state_dir / name).unlink(missing_ok=True)
    return changed


def _record(state_dir: Path) -> dict[str, str | None] | None:
    data = _read(state_dir / STATE_RECORD)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "installed" in record else None


def _mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return 0o644


@dataclass(frozen=True)
class InstallConfig:
    """Where the plugin goes on the node (docs/node.md, "Paths on the node")."""

    conf_dir: Path = Path("/etc/cni/net.d")
    bin_dir: Path = Path("/opt/cni/bin")
    state_dir: Path = Path("/var/run/ambit/node-agent")
    settings: PluginSettings = field(default_factory=PluginSettings)
    # Written (beside the conflist) when given; a function is asked each round, so a
    # rotated token reaches the plugin.
    kubeconfig: PluginKubeconfig | Callable[[], PluginKubeconfig] | None = None
    source: Path | None = None  # the plugin's file; default: this installation's
    poll_seconds: float = POLL_SECONDS

    @property
    def kubeconfig_file(self) -> Path:
        """Where this process writes the plugin's kubeconfig: ``settings.kubeconfig`` names
        it as the node sees it, in the CNI config directory (``conf_dir`` here)."""
        return self.conf_dir / Path(self.settings.kubeconfig).name


@dataclass(frozen=True)
class Changes:
    binary: bool
    kubeconfig: bool
    config: Installed
    conflist: str | None = None  # the file that holds ambit-cni (None while waiting)


def ensure_installed(config: InstallConfig) -> Changes:
    """One round of ``keep_installed``: binary, kubeconfig, then the config entry."""
    binary = install_binary(config.source or plugin_source(), config.bin_dir)
    kubeconfig = False
    if config.kubeconfig is not None:
        document = (
            config.kubeconfig
            if isinstance(config.kubeconfig, PluginKubeconfig)
            else (config.kubeconfig())
        )
        kubeconfig = write_plugin_kubeconfig(config.kubeconfig_file, document)
    installed, conflist = _install_config(config.conf_dir, config.state_dir, config.settings)
    return Changes(binary, kubeconfig, installed, conflist)


def uninstall(config: InstallConfig) -> None:
    """Everything ``ensure_installed`` put on the node, taken away in the order that
    never leaves the runtime a chain naming a missing plugin: the config entry
    first (``uninstall_config``), then the kubeconfig (when this config wrote it)
    and the binary. Cancel ``keep_installed`` before."""
    uninstall_config(config.conf_dir, config.state_dir)
    if config.kubeconfig is not None:
        config.kubeconfig_file.unlink(missing_ok=True)
    (config.bin_dir / PLUGIN_TYPE).unlink(missing_ok=True)


async def keep_installed(
    config: InstallConfig,
    *,
    on_round: Callable[[Changes | Exception], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Install, then check every ``poll_seconds`` and install again what was
    rewritten or removed; until cancelled. ``task_status.started()`` once the
    primary CNI's config has ambit-cni (after waiting for the file to appear).
    A failing round (an unwritable directory) is logged once and retried."""
    started, rounds, waiting_logged, last_error = False, 0, False, ""
    while True:
        try:
            changes = await trio.to_thread.run_sync(ensure_installed, config)
        except (OSError, CniConfigError) as error:
            if on_round is not None:
                on_round(error)
            if repr(error) != last_error:
                log.error("cni_install_failed", reason=repr(error), conf_dir=str(config.conf_dir))
                last_error = repr(error)
        else:
            last_error = ""
            if on_round is not None:
                on_round(changes)
            if changes.binary:
                event = "cni_binary_installed" if rounds == 0 else "cni_binary_reinstalled"
                log.info(event, path=str(config.bin_dir / PLUGIN_TYPE))
            if changes.kubeconfig and rounds > 0:
                log.info("cni_kubeconfig_rewritten", path=config.settings.kubeconfig)
            if changes.config is Installed.WAITING and not waiting_logged:
                log.info("cni_waiting_for_primary_config", conf_dir=str(config.conf_dir))
                waiting_logged = True
            elif changes.config is Installed.INSTALLED:
                event = "cni_config_reinstalled" if started else "cni_config_installed"
                log.info(event, conf_dir=str(config.conf_dir))
            if changes.config is not Installed.WAITING:
                waiting_logged = False
                if not started:
                    started = True
                    task_status.started()
            rounds += 1
        await trio.sleep(config.poll_seconds)
