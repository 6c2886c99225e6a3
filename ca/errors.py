"""Error types of the CA package.

:class:`CaError` is the base of everything the CA raises on purpose. Request
problems (a CSR the CA refuses) are :class:`ca.csr.CsrRejected`, which carries
a ``reason`` code for the caller; configuration and state problems (key files,
rotation misuse) are the other subclasses and carry the fix in their message.
"""

from __future__ import annotations


class CaError(Exception):
    """Something the certificate authority refuses or cannot do."""


class CaFileError(CaError):
    """A CA file is missing, unreadable, malformed, or does not match its partner."""


class KeyFilePermissionError(CaFileError):
    """A CA private key file is readable by users other than its owner."""


class CaStateError(CaError):
    """An operation does not fit the CA's current state (e.g. retiring the signing root)."""


class InvalidTtl(CaError):
    """A requested certificate lifetime is not a positive number of seconds."""

    reason = "bad-ttl"
