"""One settings object. Every environment variable modeldepot reads is read here, once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _seconds(env, name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        from .errors import InvalidInput

        raise InvalidInput(f"{name} must be a number of seconds >= 0, got {raw[:40]!r}")
    return value


def default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("modeldepot", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Where the depot lives and how it talks to the outside world."""

    home: Path
    db_url: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)
    offline: bool = False
    debug: bool = False
    # the key that token hashes are keyed with (registry/auth/tokens.py); default <home>/auth.key
    auth_key_file: Path | None = None
    # `serve --proxy`: the upstream a pull-through proxy fetches misses from ("" = ``endpoint``),
    # the token it uses there (never a client's), and how long a branch/tag stays resolved.
    proxy: str | None = None
    proxy_token: str | None = field(default=None, repr=False)
    proxy_ttl: float = 300.0
    # Blobs in an S3-compatible object store (registry/store/s3.py); None: the local directory.
    blob_url: str | None = None
    blob_cache_bytes: int = 20 * 1024**3  # the local read-through cache's cap on S3 hosts
    blob_redirect: bool = False  # serve GET /resolve by redirecting to a presigned URL
    presign_seconds: int = 300

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        home = env.get("MODELDEPOT_HOME")
        values = dict(
            home=Path(home).expanduser() if home else default_home(),
            db_url=env.get("MODELDEPOT_DB_URL") or None,
            endpoint=(env.get("MODELDEPOT_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=env.get("MODELDEPOT_TOKEN") or env.get("HF_TOKEN") or None,
            offline=_truthy(env.get("MODELDEPOT_OFFLINE")),
            debug=_truthy(env.get("MODELDEPOT_DEBUG")),
            auth_key_file=Path(env["MODELDEPOT_AUTH_KEY_FILE"]) if env.get("MODELDEPOT_AUTH_KEY_FILE") else None,
            proxy=env.get("MODELDEPOT_PROXY"),
            proxy_token=env.get("MODELDEPOT_PROXY_TOKEN") or None,
            proxy_ttl=_seconds(env, "MODELDEPOT_PROXY_TTL", 300.0),
            blob_url=env.get("MODELDEPOT_BLOB_URL") or None,
            blob_redirect=_truthy(env.get("MODELDEPOT_BLOB_REDIRECT")),
        )
        if env.get("MODELDEPOT_BLOB_CACHE_SIZE"):
            from .units import parse_size

            values["blob_cache_bytes"] = parse_size(env["MODELDEPOT_BLOB_CACHE_SIZE"])
        if env.get("MODELDEPOT_PRESIGN_SECONDS"):
            values["presign_seconds"] = int(env["MODELDEPOT_PRESIGN_SECONDS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values["home"], str):
            values["home"] = Path(values["home"]).expanduser()
        values["home"] = Path(values["home"]).absolute()
        values["endpoint"] = values["endpoint"].rstrip("/")
        return cls(**values)

    @property
    def proxy_upstream(self) -> str | None:
        """The proxy's upstream URL, or None when ``serve`` is not a proxy."""
        if self.proxy is None:
            return None
        return (self.proxy or self.endpoint).rstrip("/")

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'depot.db'}"

    @property
    def hub_cache(self) -> Path:
        """The HF-cache-shaped view (what HF_HUB_CACHE should point at)."""
        return self.home / "hub"

    @property
    def datasets_cache(self) -> Path:
        """Datasets prepared the way ``datasets`` caches them (what HF_DATASETS_CACHE should
        point at for ``load_dataset("org/name")`` offline; registry/datasets_cache.py)."""
        return self.home / "datasets"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs" / "sha256"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"
