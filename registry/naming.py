"""Repo ids, revision specs and ref names: parsing and validation in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

# The Hub's own rule (huggingface_hub.utils._validators), plus a length limit.
REPO_ID_RE = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]+$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REF_RE = re.compile(r"^[A-Za-z0-9._\-/]+$")
REPO_TYPES = ("model", "dataset")


def validate_repo_id(name: str) -> str:
    if (
        not isinstance(name, str)
        or not REPO_ID_RE.match(name)
        or len(name) > 96
        or "--" in name
        or ".." in name
        or any(part.startswith(("-", ".")) or part.endswith(("-", ".")) for part in name.split("/"))
    ):
        raise InvalidInput(
            f"invalid repo id {name!r}: use 'org/name' (letters, digits, '-', '_', '.'; "
            "no '--' or '..')"
        )
    return name


def is_hub_ref(rev: str | None) -> bool:
    """``refs/pr/N``, ``refs/convert/X``: names the Hub resolves for a pull request or a
    conversion; the registry records the commit, never the name as a branch."""
    return rev is not None and rev.startswith(("refs/pr/", "refs/convert/"))


def validate_ref_name(name: str) -> str:
    if (
        not name
        or len(name) > 200
        or not REF_RE.match(name)
        or COMMIT_RE.match(name)
        or any(p in ("", ".", "..") for p in name.split("/"))
        or name.endswith(".lock")
    ):
        raise InvalidInput(
            f"invalid ref name {name!r}: use letters, digits, '.', '_', '-', '/' "
            "(and not a 40-hex commit id)"
        )
    return name


def validate_repo_type(repo_type: str) -> str:
    if repo_type not in REPO_TYPES:
        raise InvalidInput(f"invalid repo type {repo_type!r}: use one of {', '.join(REPO_TYPES)}")
    return repo_type


def is_commit(rev: str | None) -> bool:
    return bool(rev) and bool(COMMIT_RE.match(rev))


@dataclass(frozen=True)
class RepoSpec:
    """``org/name[@rev]`` as typed by a user."""

    name: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name


def parse_spec(spec: str) -> RepoSpec:
    name, sep, rev = spec.partition("@")
    validate_repo_id(name)
    if sep and not rev:
        raise InvalidInput(f"empty revision in {spec!r}: use REPO@REVISION")
    if rev and (len(rev) > 200 or any(c in rev for c in "\0\\") or ".." in rev.split("/")):
        raise InvalidInput(f"invalid revision {rev!r}")
    return RepoSpec(name, rev or None)
