"""The reading half of :mod:`k8s.manifests`: typed reads of one document's fields, with
errors that name the document and the field path, and the metadata every kind has."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

Pairs: TypeAlias = tuple[tuple[str, str], ...]
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")  # a DNS-1123 subdomain


class ManifestError(ValueError):
    """A manifest is malformed or asks for something ambit does not support."""


@dataclass(frozen=True, kw_only=True)
class Meta:
    """What every object has. ``uid``, ``resource_version`` and ``creation_timestamp``
    (RFC 3339) are the API server's, kept as given; a manifest file has none and the
    object store (:mod:`k8s.store`) assigns them. They never count as content:
    :meth:`content_equal` leaves them out."""

    name: str
    namespace: str = "default"
    labels: Pairs = ()
    annotations: Pairs = ()
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: str = ""

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
        text = self.string(value, path, default)
        if len(text) > 253 or not _NAME_RE.match(text):
            self.fail(
                path,
                f"{text!r} is not a Kubernetes name: lowercase letters, digits, '-' and '.',"
                " starting and ending with a letter or digit",
            )
        return text

    def string(self, value: object, path: str, default: str | None = None) -> str:
        if value is None and default is not None:
            return default
        if value is None:
            self.fail(path, "required")
        if isinstance(value, bool | int | float):
            self.fail(path, f"must be a string, not {kind_of(value)} {value!r} (quote it)")
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {kind_of(value)}")
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
        items = self.mapping(value, path)
        return tuple(sorted((k, self.string(v, f"{path}.{k}")) for k, v in items.items()))

    def selector(self, value: object, path: str) -> Pairs | None:
        match_labels = self.mapping(value, path, ("matchLabels",)).get("matchLabels")
        return self.labels(match_labels, f"{path}.matchLabels") or None


def kind_of(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_meta(r: Reader, doc: Mapping[str, object], *, namespaced: bool = True) -> dict[str, Any]:
    """``name``, ``namespace`` (default "default"), ``labels`` and ``annotations``."""
    meta = r.mapping(doc.get("metadata"), "metadata")
    out: dict[str, Any] = {
        "name": r.name(meta.get("name"), "metadata.name"),
        "labels": r.labels(meta.get("labels"), "metadata.labels"),
        "annotations": r.labels(meta.get("annotations"), "metadata.annotations"),
    }
    if namespaced:
        out["namespace"] = r.name(meta.get("namespace"), "metadata.namespace", "default")
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
    return out
