"""Connection-level serve options, kept free of aiohttp so the CLI can read the defaults."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HttpOptions:
    """Connection-level limits and the access log (see ``limits.py`` and ``logs.py``)."""

    header_timeout: float = 20.0   # from a request's first byte to its last header line
    body_timeout: float = 60.0     # the longest silence while a request body is being read
    idle_timeout: float = 75.0     # a kept-alive connection with no request
    write_timeout: float = 60.0    # the longest a response may make no progress
    max_connections: int | None = None  # None: derived from the open-file limit
    max_connections_per_client: int = 256
    access_log: str | None = None  # a file path, "-" for stdout, None for none
    # Host headers accepted for absolute links (besides the address the client connected to)
    allowed_hosts: list[str] = field(default_factory=list)
