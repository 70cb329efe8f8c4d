"""JSON from untrusted input (bundle manifests, lockfiles, inventories, HTTP bodies), bounded
before it is parsed.

The standard library parser recurses once per nesting level (a RecursionError, not a
ValueError, for 100,000 nested brackets) and builds the whole document before anyone can look
at its size (a 50 MiB manifest took 1.4 GB). Both bounds are checked here first: the size on
the raw bytes, the depth by one linear scan that skips string contents in C (``re``), so a
hostile document is refused in time proportional to its length and with no recursion at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_DEPTH = 64

# A JSON string (escapes included) or one bracket; strings are matched whole so brackets inside
# them are never counted. The string is written as runs of plain characters between escapes
# ("unrolled"): ``(?:[^"\\]|\\.)*`` keeps one backtracking frame per character, which took
# 3.6 s and 1.7 GB for one 15 MB string; this form takes 0.1 s and no memory to speak of.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JSONInputError(ValueError):
    """The input is not JSON we accept; ``str()`` is one line that says why."""


def _reject_constant(name: str):
    raise JSONInputError(f"{name} is not a valid JSON number")


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
          allow_nan: bool = False, max_containers: int | None = None) -> Any:
    """Parse ``data`` as JSON after checking its size and nesting depth.

    ``max_containers`` bounds the number of objects and arrays: what a parsed document costs in
    memory is mostly theirs (``[{},{},...]`` holds ~64 bytes per 3 bytes of input), so this is
    the bound that keeps a document within ``max_bytes`` also within a known memory budget.

    Raises ``JSONInputError`` (a ``ValueError``) with a one-line reason: too large, nested too
    deep, not UTF-8, NaN/Infinity (unless ``allow_nan``), or the parser's own message.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JSONInputError(f"larger than {max_bytes:,} bytes")
    depth = containers = 0
    for m in _TOKEN.finditer(raw):
        tok = m.group()
        if tok in (b"[", b"{"):
            depth += 1
            containers += 1
            if depth > max_depth:
                raise JSONInputError(f"nested deeper than {max_depth} levels")
            if max_containers is not None and containers > max_containers:
                raise JSONInputError(f"more than {max_containers:,} objects and arrays")
        elif tok in (b"]", b"}"):
            depth -= 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JSONInputError("not UTF-8 text") from None
    kwargs = {} if allow_nan else {"parse_constant": _reject_constant}
    try:
        return json.loads(text, **kwargs)
    except JSONInputError:
        raise
    except json.JSONDecodeError as e:
        raise JSONInputError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except (RecursionError, ValueError) as e:  # defensive: the scan above should prevent these
        raise JSONInputError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
