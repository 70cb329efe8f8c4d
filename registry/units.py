"""Sizes and timestamps as people type them and as the Hub protocol writes them."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from .errors import InvalidInput

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def human_size(n: int | float | None, unknown: str = "-") -> str:
    """``134.0 KB``: decimal units, as the Hub shows sizes."""
    if n is None:
        return unknown
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def parse_size(text: str) -> int:
    """``700M``, ``4G``, ``4GiB`` (powers of 1024, as GNU split reads them), ``4GB`` (of 1000),
    or a plain number of bytes."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise InvalidInput(f"invalid size {text!r}: use bytes or a number with K, M, G or T "
                           "(powers of 1024; KB, MB, GB for powers of 1000)")
    number, unit, suffix = m.group(1), m.group(2).upper(), m.group(3).lower()
    base = 1000 if suffix == "b" else 1024
    exponent = " KMGT".index(unit) if unit else 0
    return int(float(number) * base**exponent)


def iso_z(dt: datetime | None) -> str | None:
    """UTC with milliseconds and a ``Z``: huggingface_hub refuses ``+00:00`` offsets.

    Naive datetimes are taken as UTC (the registry stores them so)."""
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
