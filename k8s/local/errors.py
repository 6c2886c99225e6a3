"""Error types of local mode; every message says what to do about it."""

from __future__ import annotations


class LocalClusterError(Exception):
    """Something local mode cannot do; the message carries the operator's next step."""


class PrerequisiteError(LocalClusterError):
    """The machine lacks something local mode needs (root, ``ip``, ``iptables``)."""


class AddressInUseError(LocalClusterError):
    """The pod or service CIDR overlaps an address or route already on this host."""


class AlreadyRunningError(LocalClusterError):
    """A cluster already runs from this state directory."""


class NotRunningError(LocalClusterError):
    """No cluster answers from this state directory."""


class CommandFailed(LocalClusterError):
    """A system command (``ip``, ``iptables-restore``) exited non-zero."""


class NetnsError(LocalClusterError):
    """A network namespace could not be entered."""
