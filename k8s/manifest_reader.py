"""The reading half of :mod:`k8s.manifests`: typed reads of one document's fields, with
errors that name the document and the field path, and the metadata every kind has."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

Pairs: TypeAlias = tuple[tuple[str, str], ...]

# The API server's validation (k8s.io/apimachinery/pkg/util/validation), so that what
# ambit stores is what a cluster would have stored: every name that later becomes a
# path, a network namespace or a process argument has passed one of these first.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
_DNS_SUBDOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DNS_1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
ANNOTATIONS_MAX_BYTES = 256 * 1024
STRING_MAX = 64 * 1024  # any other string (a command argument, an env value...)


class ManifestError(ValueError):
    """A manifest is malformed or asks for something ambit does not support."""


@dataclass(frozen=True, kw_only=True)
class Meta:
    """What every object has. ``uid``, ``resource_version`` and ``creation_timestamp``
    (RFC 3339) are the API server's, kept as given; a manifest file has none and the
    object store (:mod:`k8s.store`) assigns them. They never count as content:
    :meth:`content_equal` leaves them out. ``generation`` (the API server's, bumped by
    each change of the spec) does count: a status's ``observedGeneration`` follows it
    even when the spec changed only in fields ambit does not read."""

    name: str
    namespace: str = "default"
    labels: Pairs = ()
    annotations: Pairs = ()
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: str = ""
    generation: int = 0  # the API server's metadata.generation (0: none given)

    def content_equal(self, other: object) -> bool:
        """Equal apart from the server-assigned metadata."""
        if type(other) is not type(self):
            return False
        assert isinstance(other, Meta)
        return dataclasses.replace(
            self, uid="", resource_version="", creation_timestamp=""
        ) == dataclasses.replace(other, uid="", resource_version="", creation_timestamp="")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class Reader:
    """Typed reads of one document's fields; every failure names the document and the path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> NoReturn:
        raise ManifestError(f"{self.where}: {path}: {message}")

    def mapping(
        self, value: object, path: str, allowed: Iterable[str] | None = None
    ) -> dict[str, object]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, not {kind_of(value)}")
        if allowed is not None:
            known = tuple(allowed)
            for key in value:
                if key not in known:
                    self.fail(f"{path}.{key}", f"unknown field; known fields: {', '.join(known)}")
        return {str(k): v for k, v in value.items()}

    def sequence(self, value: object, path: str) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {kind_of(value)}")
        return value

    def name(self, value: object, path: str, default: str | None = None) -> str:
        """A DNS-1123 subdomain (most object names, node names, service accounts)."""
        text = self.string(value, path, default)
        if len(text) > DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN_RE.match(text):
            self.fail(
                path,
                f"{_shown(text)} is not a valid name: at most {DNS_SUBDOMAIN_MAX} characters of"
                " lowercase letters, digits, '-' and '.', each dot-separated part starting and"
                " ending with a letter or digit",
            )
        return text

    def label_name(self, value: object, path: str, default: str | None = None) -> str:
        """A DNS-1123 label (namespace names, container names, Service port names)."""
        text = self.string(value, path, default)
        if len(text) > DNS_LABEL_MAX or not _DNS_LABEL_RE.match(text):
            self.fail(
                path,
                f"{_shown(text)} is not a valid name: at most {DNS_LABEL_MAX} lowercase letters,"
                " digits and '-', starting and ending with a letter or digit",
            )
        return text

    def dns1035_name(self, value: object, path: str) -> str:
        """A DNS-1035 label (Service names: they become DNS names)."""
        text = self.string(value, path)
        if len(text) > DNS_LABEL_MAX or not _DNS_1035_RE.match(text):
            self.fail(
                path,
                f"{_shown(text)} is not a valid Service name: at most {DNS_LABEL_MAX} lowercase"
                " letters, digits and '-', starting with a letter and ending with a letter or"
                " digit",
            )
        return text

    def port_name(self, value: object, path: str) -> str:
        """An IANA service name (a container port's name; named targetPorts point at it)."""
        text = self.string(value, path, "")
        if text and (
            len(text) > 15
            or not _PORT_NAME_RE.match(text)
            or "--" in text
            or not any(c.isalpha() for c in text)
        ):
            self.fail(
                path,
                f"{_shown(text)} is not a valid port name: at most 15 lowercase letters, digits"
                " and '-', with at least one letter, no '--', not starting or ending with '-'",
            )
        return text

    def env_name(self, value: object, path: str) -> str:
        text = self.string(value, path)
        if not _ENV_NAME_RE.match(text):
            self.fail(
                path,
                f"{_shown(text)} is not a valid environment variable name: letters, digits,"
                " '_', '-' and '.', not starting with a digit (and never '=')",
            )
        return text

    def items(self, value: object, path: str, limit: int) -> list[tuple[object, str]]:
        """The entries of a list of at most ``limit``, each with its path (``path[i]``)."""
        entries = self.sequence(value, path)
        if len(entries) > limit:
            self.fail(path, f"at most {limit} entries, not {len(entries)}")
        return [(entry, f"{path}[{i}]") for i, entry in enumerate(entries)]

    def integer(self, value: object, path: str, low: int, high: int) -> int:
        if type(value) is not int or not low <= value <= high:
            self.fail(path, f"must be an integer {low:,}-{high:,}, not {value!r}")
        return value

    def string(
        self, value: object, path: str, default: str | None = None, *, limit: int = STRING_MAX
    ) -> str:
        """A string of at most ``limit`` characters; ``default`` when absent (else required)."""
        if value is None and default is not None:
            return default
        if value is None:
            self.fail(path, "required")
        if isinstance(value, bool | int | float):
            self.fail(path, f"must be a string, not {kind_of(value)} {value!r} (quote it)")
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {kind_of(value)}")
        if "\x00" in value:
            self.fail(path, "must not contain a NUL character")
        if len(value) > limit:
            self.fail(path, f"is {len(value)} characters long; at most {limit} are allowed")
        return value

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        return tuple(
            self.string(v, f"{path}[{i}]") for i, v in enumerate(self.sequence(value, path))
        )

    def port(self, value: object, path: str, *, text_ok: bool = False) -> int:
        if text_ok and isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            self.fail(path, f"must be an integer 1-65535, not {value!r}")
        return value

    def ip(self, value: object, path: str) -> str:
        text = self.string(value, path)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            self.fail(path, f"{text!r} is not an IP address")
        return text

    def labels(self, value: object, path: str) -> Pairs:
        """Label keys and values as the API server checks them (keys: an optional DNS
        subdomain prefix and '/', then a name of at most 63 characters; values: at most 63)."""
        items = self.mapping(value, path)
        out = []
        for key, raw in items.items():
            self.qualified_key(key, path)
            text = self.string(raw, f"{path}.{key}")
            if len(text) > DNS_LABEL_MAX or not _LABEL_VALUE_RE.match(text):
                self.fail(
                    f"{path}.{key}",
                    f"{_shown(text)} is not a valid label value: at most {DNS_LABEL_MAX}"
                    " letters, digits, '-', '_' and '.', starting and ending with a letter or"
                    " digit (or empty)",
                )
            out.append((key, text))
        return tuple(sorted(out))

    def annotations(self, value: object, path: str) -> Pairs:
        """Annotation keys as label keys; values any text, all of them together at most
        256 KiB (the API server's limit)."""
        items = self.mapping(value, path)
        out = []
        total = 0
        for key, raw in items.items():
            self.qualified_key(key, path)
            text = self.string(raw, f"{path}.{key}")
            total += len(key.encode()) + len(text.encode())
            out.append((key, text))
        if total > ANNOTATIONS_MAX_BYTES:
            self.fail(path, f"{total} bytes in total; at most {ANNOTATIONS_MAX_BYTES} are allowed")
        return tuple(sorted(out))

    def qualified_key(self, key: str, path: str) -> None:
        """A label or annotation key: ``[prefix/]name``."""
        prefix, slash, name = key.rpartition("/")
        at = f"{path}.{_shown(key)}"
        if "\x00" in key:
            self.fail(at, "a key must not contain a NUL character")
        if slash and (
            not prefix or len(prefix) > DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN_RE.match(prefix)
        ):
            self.fail(at, f"the key's prefix {_shown(prefix)} is not a DNS subdomain")
        if len(name) > DNS_LABEL_MAX or not _QUALIFIED_NAME_RE.match(name):
            self.fail(
                at,
                f"{_shown(key)} is not a valid key: a name of at most {DNS_LABEL_MAX} letters,"
                " digits, '-', '_' and '.', starting and ending with a letter or digit,"
                " optionally after a DNS subdomain prefix and '/'",
            )

    def selector(self, value: object, path: str) -> Pairs | None:
        match_labels = self.mapping(value, path, ("matchLabels",)).get("matchLabels")
        return self.labels(match_labels, f"{path}.matchLabels") or None


def _shown(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def kind_of(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_meta(
    r: Reader,
    doc: Mapping[str, object],
    *,
    namespaced: bool = True,
    name_check: Callable[[Reader, object, str], str] = Reader.name,
) -> dict[str, Any]:
    """``name`` (checked by ``name_check``: a DNS subdomain unless the kind says otherwise),
    ``namespace`` (a DNS label, default "default"), ``labels``, ``annotations`` and the
    server-assigned fields."""
    meta = r.mapping(doc.get("metadata"), "metadata")
    out: dict[str, Any] = {
        "name": name_check(r, meta.get("name"), "metadata.name"),
        "labels": r.labels(meta.get("labels"), "metadata.labels"),
        "annotations": r.annotations(meta.get("annotations"), "metadata.annotations"),
    }
    if namespaced:
        out["namespace"] = r.label_name(meta.get("namespace"), "metadata.namespace", "default")
    for key, field in (
        ("uid", "uid"),
        ("resourceVersion", "resource_version"),
        ("creationTimestamp", "creation_timestamp"),
    ):
        value = meta.get(key)
        if isinstance(value, datetime.datetime):  # YAML reads an unquoted timestamp as one
            value = value.strftime("%Y-%m-%dT%H:%M:%SZ")
        if value is not None:
            out[field] = r.string(value, f"metadata.{key}")
    generation = meta.get("generation")
    if isinstance(generation, int) and not isinstance(generation, bool) and generation > 0:
        out["generation"] = generation
    return out
