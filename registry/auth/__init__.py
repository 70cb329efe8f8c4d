"""Access control for a served depot: tokens, scopes, repo patterns, private and gated repos,
approvals, abuse limits and the access audit.

The server consults this package through one middleware (``registry/server/auth_mw.py``) and
listings through ``visibility.listing_filter``; handlers make no access checks of their own.
"""

from .policy import MODES, AuthOptions, Principal  # noqa: F401
