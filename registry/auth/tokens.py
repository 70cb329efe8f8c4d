"""Depot tokens: creation, storage as a salted keyed hash, verification in constant time.

A token reads ``mdp_<lookup><secret><check>``: ``lookup`` (10 characters) finds the row without
a scan, ``secret`` (32 base62 characters, about 190 bits) is never stored, and ``check`` (6) is a
CRC32 of the rest so that garbled strings are refused without a database look-up and secret
scanners can recognise a depot token. The row keeps ``HMAC-SHA256(key, salt || token)``; the key
lives outside the database (``<home>/auth.key``, or ``MODELDEPOT_AUTH_KEY_FILE``), so a copy of
the registry alone cannot even be used to test guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import string
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from ..config import Settings
from ..errors import Conflict, InvalidInput, NotFound
from ..models import AccessToken, utcnow
from ..units import iso_z

PREFIX = "mdp_"
ALPHABET = string.digits + string.ascii_letters
LOOKUP_LEN, SECRET_LEN, CHECK_LEN = 10, 32, 6
TOKEN_LEN = len(PREFIX) + LOOKUP_LEN + SECRET_LEN + CHECK_LEN
TOKEN_RE = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{LOOKUP_LEN + SECRET_LEN + CHECK_LEN}}}")
SCOPES = ("read", "write", "admin", "inference")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
# globs with * and ? only, so that listings can filter with SQL LIKE
PATTERN_RE = re.compile(r"^[A-Za-z0-9/_.*?-]{1,200}$")
DURATION_RE = re.compile(r"^(\d+)\s*([mhdwy])$")
DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _check(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECK_LEN)


def new_token_string() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(LOOKUP_LEN + SECRET_LEN))
    return f"{PREFIX}{body}{_check(body)}"


def well_formed(token: str) -> bool:
    if len(token) != TOKEN_LEN or not TOKEN_RE.fullmatch(token):
        return False
    body = token[len(PREFIX):-CHECK_LEN]
    return hmac.compare_digest(token[-CHECK_LEN:], _check(body))


def lookup_of(token: str) -> str:
    return token[len(PREFIX):len(PREFIX) + LOOKUP_LEN]


def redact(text: str) -> str:
    """Text with every depot token in it replaced (for anything that logs request data)."""
    return TOKEN_RE.sub(PREFIX + "[redacted]", text)


# -- the key ------------------------------------------------------------------------------------


def key_path(settings: Settings) -> Path:
    return settings.auth_key_file or settings.home / "auth.key"


def load_key(settings: Settings, create: bool = False) -> bytes | None:
    """The HMAC key; created (mode 0600, atomically) when asked and absent."""
    path = key_path(settings)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    except ValueError:
        raise InvalidInput(f"{path} is not a modeldepot auth key (64 hex digits)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return load_key(settings)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return load_key(settings)


def digest(key: bytes, salt: str, token: str) -> str:
    return hmac.new(key, bytes.fromhex(salt) + token.encode(), hashlib.sha256).hexdigest()


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRecord:
    """What the server keeps in memory about one token (never its secret)."""

    id: int
    name: str
    lookup: str
    salt: str
    digest: str
    scopes: frozenset[str]
    repos: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: AccessToken) -> "TokenRecord":
        return cls(row.id, row.name, row.lookup, row.salt, row.digest, frozenset(row.scopes or []),
                   tuple(row.repos or []), row.created_at, row.expires_at, row.revoked_at)

    def status(self, now: datetime | None = None) -> str:
        now = now or utcnow()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def token_json(row: AccessToken) -> dict:
    rec = TokenRecord.of(row)
    return {
        "name": row.name, "scopes": sorted(rec.scopes), "repos": list(rec.repos) or ["*"],
        "created_at": iso_z(row.created_at), "created_by": row.created_by,
        "expires_at": iso_z(row.expires_at), "revoked_at": iso_z(row.revoked_at),
        "status": rec.status(),
    }


def parse_duration(text: str) -> timedelta:
    m = DURATION_RE.match(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise InvalidInput(f"invalid duration {text!r}: use a number and a unit, e.g. 90m, 12h, "
                           "30d, 8w, 1y")
    return timedelta(seconds=int(m.group(1)) * DURATION_UNITS[m.group(2)])


def validate_patterns(patterns) -> list[str]:
    out = []
    for p in patterns:
        p = p.strip()
        if not PATTERN_RE.match(p):
            raise InvalidInput(f"invalid repo pattern {p!r}: use a repo id or a glob with * and "
                               "? like 'org/*'")
        out.append(p)
    return out


def create_token(depot, name: str, scopes=("read",), repos=(), expires: str | None = None,
                 actor: str = "") -> tuple[str, dict]:
    """A new token: the secret (shown once) and its public description."""
    if not NAME_RE.match(name):
        raise InvalidInput(f"invalid token name {name!r}: use letters, digits and . _ - @ "
                           "(at most 100), starting with a letter or digit")
    scopes = sorted(set(scopes or ("read",)))
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise InvalidInput(f"unknown scope {bad[0]!r}: use {', '.join(SCOPES)}")
    patterns = validate_patterns(repos or ())
    expires_at = utcnow() + parse_duration(expires) if expires else None
    key = load_key(depot.settings, create=True)
    token = new_token_string()
    salt = secrets.token_hex(16)
    with depot.db.session(write=True) as s:
        if s.scalar(select(AccessToken.id).where(AccessToken.name == name)) is not None:
            # names stay taken after revocation: the audit refers to tokens by name
            raise Conflict(f"a token named {name!r} already exists (see 'modeldepot token "
                           "list'): pick another name")
        row = AccessToken(name=name, lookup=lookup_of(token), salt=salt,
                          digest=digest(key, salt, token), scopes=scopes, repos=patterns,
                          created_by=actor or _actor(), expires_at=expires_at)
        s.add(row)
        s.flush()
        depot.log_event(s, "token-create", token=name, scopes=scopes, repos=patterns,
                        expires_at=iso_z(expires_at))
        return token, token_json(row)


def list_tokens(depot) -> list[dict]:
    with depot.db.session() as s:
        return [token_json(r) for r in s.scalars(select(AccessToken).order_by(AccessToken.name))]


def get_token_row(s, name: str) -> AccessToken:
    row = s.scalar(select(AccessToken).where(AccessToken.name == name))
    if row is None:
        raise NotFound(f"no token named {name!r}; see 'modeldepot token list'")
    return row


def revoke_token(depot, name: str) -> dict:
    with depot.db.session(write=True) as s:
        row = get_token_row(s, name)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            depot.log_event(s, "token-revoke", token=name)
        return token_json(row)


def _actor() -> str:
    from ..depot import actor

    return actor()
