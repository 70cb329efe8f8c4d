"""TLS for `modeldepot serve --tls-cert FILE --tls-key FILE`."""

from __future__ import annotations

import os
import ssl

from ..errors import InvalidInput


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with the ssl module's secure defaults (TLS 1.2 or newer)."""
    for path in (cert, key):
        if not os.path.isfile(path):
            raise InvalidInput(f"cannot read {path}: give --tls-cert and --tls-key as PEM files")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise InvalidInput(f"--tls-cert {cert} and --tls-key {key} do not make a certificate "
                           f"chain ({e.reason or e}): give the PEM certificate (with its chain) "
                           "and its private key") from None
    return context
