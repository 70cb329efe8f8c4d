"""TLS for `modeldepot serve --tls-cert FILE --tls-key FILE`."""

from __future__ import annotations

import ssl

from ..errors import InvalidInput


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with the ssl module's secure defaults (TLS 1.2 or newer)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise InvalidInput(f"cannot read {e.filename}: give --tls-cert and --tls-key as PEM "
                           "files") from None
    except ssl.SSLError as e:
        raise InvalidInput(f"--tls-cert {cert} and --tls-key {key} do not make a certificate "
                           f"chain ({e.reason or e}): give the PEM certificate (with its chain) "
                           "and its private key") from None
    return context
