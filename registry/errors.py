"""Domain errors. Each maps to one CLI exit code and one HTTP status (see the table below).

The library raises these; ``cli.py`` turns them into one-line ``Error: ...`` messages and the
server turns them into JSON error bodies. Messages say what to do next.
"""

from __future__ import annotations


class DepotError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 1
    http_status = 400
    error_type = "DepotError"
    # The Hub protocol's X-Error-Code, where one applies.
    hub_code: str | None = None

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}


class InvalidInput(DepotError):
    http_status = 422
    error_type = "InvalidInput"


class NotFound(DepotError):
    http_status = 404
    error_type = "NotFound"


class RepoNotFound(NotFound):
    error_type = "RepoNotFound"
    hub_code = "RepoNotFound"


class RevisionNotFound(NotFound):
    error_type = "RevisionNotFound"
    hub_code = "RevisionNotFound"


class EntryNotFound(NotFound):
    error_type = "EntryNotFound"
    hub_code = "EntryNotFound"


class Conflict(DepotError):
    http_status = 409
    error_type = "Conflict"


class IntegrityError(DepotError):
    """Bytes that do not match their recorded hash or size."""

    http_status = 422
    error_type = "IntegrityError"


class UpstreamError(DepotError):
    """The upstream Hub failed, refused, or could not be reached."""

    http_status = 502
    error_type = "UpstreamError"


class Unauthorized(UpstreamError):
    http_status = 401
    error_type = "Unauthorized"
    hub_code = "GatedRepo"


class OfflineError(DepotError):
    """Network access was needed but the depot is offline."""

    http_status = 503
    error_type = "Offline"


class Overloaded(DepotError):
    http_status = 429
    error_type = "Overloaded"


class Unavailable(DepotError):
    http_status = 503
    error_type = "Unavailable"


class UpstreamUnavailable(Unavailable):
    """The proxy's upstream cannot be reached right now; what is cached is still served."""

    error_type = "UpstreamUnavailable"


class UpstreamTimeout(UpstreamUnavailable):
    http_status = 504
    error_type = "UpstreamTimeout"


class SchemaError(DepotError):
    """The database schema cannot be used by this version of the code."""

    http_status = 500
    error_type = "SchemaError"


class ValidationFailed(DepotError):
    """An export or conversion did not meet its validation bounds; nothing was registered."""

    http_status = 422
    error_type = "ValidationFailed"


# -- access control (registry/auth) -------------------------------------------------------------


class AuthenticationRequired(DepotError):
    """No credentials where the depot requires them."""

    http_status = 401
    error_type = "AuthenticationRequired"


class InvalidToken(DepotError):
    """Credentials were sent but are not a live depot token (unknown, revoked, expired, garbled)."""

    http_status = 401
    error_type = "InvalidToken"


class Forbidden(DepotError):
    """A valid token that may not do this (scope, or a repo outside its patterns)."""

    http_status = 403
    error_type = "Forbidden"


class GatedRepo(DepotError):
    """A gated repo, and no approval for the caller (401 when anonymous, as the Hub does)."""

    http_status = 403
    error_type = "GatedRepo"
    hub_code = "GatedRepo"

    def __init__(self, message: str, status: int = 403, **details):
        super().__init__(message, **details)
        self.http_status = status


class TooManyRequests(Overloaded):
    """Rate limited: too many failed authentications from an address, or a token's rate."""

    error_type = "TooManyRequests"

    def __init__(self, message: str, retry_after: int, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after


class UnsupportedMediaType(InvalidInput):
    """A request body of a type or charset the route does not take."""

    http_status = 415
    error_type = "UnsupportedMediaType"
