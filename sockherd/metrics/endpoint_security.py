"""The metrics endpoint's defences: HTTP basic auth and the TLS context.

Settings (attributes of any sockherd server, also keyword settings of the
Prefork*Server constructors; `sockherd serve --metrics-auth-file` and
`--metrics-tls-cert/--metrics-tls-key` set the same attributes):

* `metrics_basic_auth = (user, password)`: every request needs
  `Authorization: Basic base64(user:password)`; anything else gets 401 with
  `WWW-Authenticate: Basic realm="sockherd"`.  The comparison is constant-time
  (`hmac.compare_digest` over SHA-256 digests, so not even the length leaks)
  and the password is never logged or shown in a repr.
* `metrics_tls_certfile`, `metrics_tls_keyfile`: serve HTTPS (TLS 1.2 or
  newer).  The key may live in the certificate file (keyfile None).  Bad
  paths or contents fail when serving starts, with `MetricsTLSError` naming
  the file and what to do.

`ssl` is imported only when TLS is configured: the supervisor's memory (and
so every fork) stays as small as before for everyone else.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

REALM = "sockherd"


class MetricsTLSError(OSError):
    """The metrics endpoint's TLS certificate or key cannot be used; the message says why
    and what to do.  An OSError, so `sockherd serve` reports it in one line."""


class BasicAuth:
    """The one user and password a metrics scrape must present."""

    def __init__(self, credentials: Any) -> None:
        """`credentials`: a (user, password) pair of non-empty strings; ValueError otherwise."""
        if (
            not isinstance(credentials, tuple | list)
            or len(credentials) != 2
            or not all(isinstance(part, str) and part for part in credentials)
        ):
            raise ValueError(
                "metrics_basic_auth must be None or a (user, password) pair of non-empty "
                f"strings, not a {type(credentials).__name__}"
            )
        user, password = credentials
        if ":" in user:
            raise ValueError(
                "metrics_basic_auth: the user name may not contain ':' (HTTP basic auth "
                "separates user and password with it)"
            )
        self.user = user
        self._digest = hashlib.sha256(f"{user}:{password}".encode()).digest()

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r}, password=<hidden>)"

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries the right user and password."""
        if not authorization:
            return False
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = binascii.a2b_base64(encoded.strip().encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return False
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._digest)


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """A server-side SSLContext (TLS >= 1.2) for the metrics endpoint, or None without
    `certfile`.  Raises MetricsTLSError naming the file and the remedy."""
    if not certfile:
        if keyfile:
            raise MetricsTLSError(
                f"metrics_tls_keyfile is set ({keyfile!r}) but metrics_tls_certfile is not: "
                "set both (--metrics-tls-cert and --metrics-tls-key) or neither"
            )
        return None
    import ssl

    _check_readable("certificate", certfile, "metrics_tls_certfile (--metrics-tls-cert)")
    if keyfile:
        _check_readable("private key", keyfile, "metrics_tls_keyfile (--metrics-tls-key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_passphrase() -> str:
        # Without a callback OpenSSL would prompt on the terminal and block the start.
        raise MetricsTLSError(
            f"metrics TLS private key {keyfile or certfile!r} is encrypted: sockherd cannot "
            "ask for its passphrase; decrypt it (openssl pkey -in KEY -out KEY.plain)"
        )

    try:
        context.load_cert_chain(certfile, keyfile, password=no_passphrase)
    except ssl.SSLError as error:
        key = f"the private key {keyfile!r}" if keyfile else "a private key in the same file"
        raise MetricsTLSError(
            f"metrics TLS: cannot use the certificate {certfile!r} with {key} "
            f"({error.reason or error}): the certificate file must hold a PEM certificate "
            "(chain) and the key file its matching unencrypted PEM private key"
        ) from error
    return context


def _check_readable(what: str, path: str, setting: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise MetricsTLSError(
            f"metrics TLS {what} file {path!r} does not exist: fix {setting}, or create one "
            "(e.g. openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem "
            "-days 365 -subj /CN=localhost)"
        )
    except IsADirectoryError:
        raise MetricsTLSError(f"metrics TLS {what} file {path!r} is a directory: fix {setting}")
    except OSError as error:
        raise MetricsTLSError(
            f"metrics TLS {what} file {path!r} cannot be read ({error.strerror}): make it "
            f"readable by uid {os.geteuid()}, the server's user, or fix {setting}"
        )
