"""SPIFFE IDs: parsing, extraction from a certificate, and matching against
configured patterns.

Where this sits: pure functions beside the data flow. ``tls/certs.py`` uses
:func:`spiffe_id_of` to find the workload's own ID, ``tls/context.py`` to find the
peer's after a handshake; authorization (``authz/``) and mesh destinations use
:func:`id_matches` to compare a verified peer ID with ``principals`` /
``identities`` from the config. No I/O, no clock.

The rules follow the SPIFFE ID spec (``spiffe://<trust-domain>/<path>``): the
trust domain is lower-case ``[a-z0-9.-_]``; path segments are
``[a-zA-Z0-9.-_]``, never empty, ``.`` or ``..``; no port, user info, query,
fragment or percent-encoding. A workload ID must have a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[a-zA-Z0-9._-]+$")
_MAX_ID = 2048
_MAX_TRUST_DOMAIN = 255


class SpiffeIdError(ValueError):
    """A malformed SPIFFE ID or trust domain; the message is one line and names the input."""


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name, else raise :class:`SpiffeIdError`."""
    if not trust_domain:
        raise SpiffeIdError("trust domain is empty")
    if len(trust_domain) > _MAX_TRUST_DOMAIN:
        raise SpiffeIdError(f"trust domain is longer than {_MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise SpiffeIdError(f"trust domain {trust_domain!r}: expected lower-case letters, digits, '.', '-' or '_'")
    return trust_domain


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed, valid workload SPIFFE ID. ``str(id)`` gives ``spiffe://<trust_domain><path>``."""

    trust_domain: str
    """Lower-case trust domain, e.g. ``cluster.local``."""
    path: str
    """The path with its leading ``/``, e.g. ``/ns/shop/sa/cart``; never empty, no trailing ``/``."""

    @classmethod
    def parse(cls, text: str) -> "SpiffeId":
        """Parse ``spiffe://TRUST_DOMAIN/PATH``; raise :class:`SpiffeIdError` (a ``ValueError``) if malformed."""
        if not isinstance(text, str) or not text:
            raise SpiffeIdError("spiffe id is empty")
        if len(text.encode()) > _MAX_ID:
            raise SpiffeIdError(f"spiffe id is longer than {_MAX_ID} bytes")
        if not text.startswith(SCHEME):
            raise SpiffeIdError(f"spiffe id {text!r}: expected spiffe://<trust-domain>/<path>")
        for ch, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
            if ch in text:
                raise SpiffeIdError(f"spiffe id {text!r}: must not contain {what}")
        rest = text[len(SCHEME):]
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            raise SpiffeIdError(f"spiffe id {text!r}: must not contain user info")
        if ":" in authority:
            raise SpiffeIdError(f"spiffe id {text!r}: must not contain a port")
        try:
            validate_trust_domain(authority)
        except SpiffeIdError as e:
            raise SpiffeIdError(f"spiffe id {text!r}: {e}") from None
        if not slash or not path:
            raise SpiffeIdError(f"spiffe id {text!r}: expected a path after the trust domain "
                                f"(spiffe://{authority}/...)")
        for seg in path.split("/"):
            if seg in ("", ".", ".."):
                raise SpiffeIdError(f"spiffe id {text!r}: path segments must not be empty, '.' or '..'")
            if not _SEGMENT.match(seg):
                raise SpiffeIdError(f"spiffe id {text!r}: path segment {seg!r} may only use letters, digits, "
                                    "'.', '-' or '_'")
        return cls(authority, "/" + path)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def _segments(self) -> list[str]:
        return self.path[1:].split("/")

    @property
    def namespace(self) -> str | None:
        """``NS`` for the Kubernetes form ``/ns/NS/sa/SA``, else None."""
        s = self._segments
        return s[1] if len(s) == 4 and s[0] == "ns" and s[2] == "sa" else None

    @property
    def service_account(self) -> str | None:
        """``SA`` for the Kubernetes form ``/ns/NS/sa/SA``, else None."""
        s = self._segments
        return s[3] if len(s) == 4 and s[0] == "ns" and s[2] == "sa" else None


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE ID: its one ``spiffe://`` URI SAN, if valid.

    None when there is no SAN extension, no ``spiffe://`` URI, more than one
    (the X509-SVID spec allows exactly one), or the one present is malformed.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension
        return None
    ids = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.lower().startswith(SCHEME)]
    if len(ids) != 1:
        return None
    try:
        return str(SpiffeId.parse(ids[0]))
    except SpiffeIdError:
        return None


def _normalize(text: str) -> str:
    """Istio principals omit the scheme: ``cluster.local/ns/a/sa/b`` → ``spiffe://cluster.local/ns/a/sa/b``."""
    return text if text.startswith(SCHEME) else SCHEME + text


def id_matches(pattern: str, spiffe_id: str) -> bool:
    """Whether a verified peer ``spiffe_id`` matches a configured ``pattern``.

    - ``*`` alone matches any (non-empty) ID;
    - ``prefix*`` matches IDs starting with ``prefix`` (``spiffe://cluster.local/ns/shop/*``);
    - ``*suffix`` matches IDs ending with ``suffix`` (``*/sa/bookinfo-reviews``);
    - anything else must be equal.

    Either side may use Istio's principal form without ``spiffe://``
    (``cluster.local/ns/a/sa/b``); it is compared as if the scheme were there.
    A ``*`` anywhere else is a literal character (which no valid ID contains).
    Comparison is case-sensitive, like the SPIFFE spec's path.
    """
    if not spiffe_id or not pattern:
        return False
    if pattern == "*":
        return True
    ident = _normalize(spiffe_id)
    if pattern.startswith("*"):
        return ident.endswith(pattern[1:])
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return ident.startswith(prefix if SCHEME.startswith(prefix) else _normalize(prefix))
    return ident == _normalize(pattern)
