"""The registry schema: SQLAlchemy 2.0 typed ORM models.

Schema changes go through Alembic only (``migrations/``); ``tests/test_schema.py`` fails when the
models and the migrations drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


REPO_TYPES = ("model", "dataset")


class Repo(Base):
    """A model or dataset repository, with the upstream metadata recorded at mirror time."""

    __tablename__ = "repos"
    __table_args__ = (
        UniqueConstraint("type", "name", name="uq_repos_type_name"),
        Index("ix_repos_pipeline_tag_name", "pipeline_tag", "name"),
        Index("ix_repos_author_name", "author", "name"),
        Index("ix_repos_downloads", "downloads"),
        Index("ix_repos_updated_at", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(16), default="model")
    # "org/name" or a bare canonical "name"
    name: Mapped[str] = mapped_column(String(200))
    author: Mapped[Optional[str]] = mapped_column(String(100))
    pipeline_tag: Mapped[Optional[str]] = mapped_column(String(64))
    library_name: Mapped[Optional[str]] = mapped_column(String(64))
    license: Mapped[Optional[str]] = mapped_column(String(64))
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    gated: Mapped[Optional[str]] = mapped_column(String(16))  # None/"auto"/"manual"
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    card_data: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    # Free-form upstream metadata (config, transformersInfo, architectures, ...).
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    downloads: Mapped[Optional[int]] = mapped_column(BigInteger)
    # Downloads this depot's own server answered (registry/download_counts.py), apart from the
    # upstream figure in ``downloads``.
    served_downloads: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    likes: Mapped[Optional[int]] = mapped_column(Integer)
    upstream_last_modified: Mapped[Optional[datetime]] = mapped_column(DateTime)
    upstream_created_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    source: Mapped[Optional[str]] = mapped_column(String(500))  # endpoint or "local"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    revisions: Mapped[list["Revision"]] = relationship(
        back_populates="repo", cascade="all, delete-orphan", passive_deletes=True
    )
    refs: Mapped[list["Ref"]] = relationship(
        back_populates="repo", cascade="all, delete-orphan", passive_deletes=True
    )
    former_names: Mapped[list["RepoName"]] = relationship(
        back_populates="repo", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def display(self) -> str:
        return self.name if self.type == "model" else f"{self.type}s/{self.name}"


class Revision(Base):
    """One commit of a repo. Visible only once ``complete`` is true."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("repo_id", "commit", name="uq_revisions_repo_id_commit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    commit: Mapped[str] = mapped_column(String(40), index=True)
    parent_commit: Mapped[Optional[str]] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(16))  # import / pull / bundle / derived
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    # Known with its full file list (``meta["listing"]``) but only some files present: what a
    # pull-through proxy records when clients ask for single files. ``pull`` completes it.
    partial: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    repo: Mapped[Repo] = relationship(back_populates="revisions")
    files: Mapped[list["File"]] = relationship(
        back_populates="revision",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="File.path",
    )
    artifact: Mapped[Optional["Artifact"]] = relationship(
        back_populates="revision", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def listed_files(self) -> list:
        """Every file of the commit: the File rows, plus (for a partial revision) the files that
        are listed upstream but not fetched yet, as ``ListedFile`` (same attributes, no blob)."""
        if not self.partial:
            return list(self.files)
        present = {f.path: f for f in self.files}
        return [present.get(d["path"]) or ListedFile(**d)
                for d in (self.meta or {}).get("listing", [])]


@dataclass(frozen=True)
class ListedFile:
    """A file of a partial revision that is known (size, hashes) but not in the store yet."""

    path: str
    size: int
    lfs: bool
    sha256: Optional[str] = None  # always known for LFS files
    git_sha1: Optional[str] = None  # the Hub's blob id (of the LFS pointer, for LFS files)


REF_KINDS = ("branch", "tag", "alias")


class Ref(Base):
    """A name pointing at a commit: upstream branch or tag, or a registry alias such as ``prod``."""

    __tablename__ = "refs"
    __table_args__ = (UniqueConstraint("repo_id", "name", name="uq_refs_repo_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="branch")
    commit: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    repo: Mapped[Repo] = relationship(back_populates="refs")


NAME_SOURCES = ("redirect", "manual")


class RepoName(Base):
    """A former or legacy id that still reaches a repo (``gpt2`` -> ``openai-community/gpt2``),
    answered the way the Hub answers a renamed repo (registry/names.py)."""

    __tablename__ = "repo_names"
    __table_args__ = (UniqueConstraint("type", "name", name="uq_repo_names_type_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    # the type is repeated here so that a name is unique per type, as repo ids are
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))  # "redirect" (seen upstream) or "manual"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    repo: Mapped[Repo] = relationship(back_populates="former_names")


class Blob(Base):
    """Content stored once in ``blobs/sha256/``, whatever refers to it."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class File(Base):
    """One path in one revision, with the hashes the Hub protocol needs."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("revision_id", "path", name="uq_files_revision_id_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision_id: Mapped[int] = mapped_column(
        ForeignKey("revisions.id", ondelete="CASCADE"), index=True
    )
    path: Mapped[str] = mapped_column(String(1000))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    git_sha1: Mapped[str] = mapped_column(String(40))
    lfs: Mapped[bool] = mapped_column(Boolean, default=False)
    # How the hashes were established: "verified" (checked against upstream), "computed"
    # (upstream gave none to check against; we hashed what we received), "local" (imported).
    verification: Mapped[str] = mapped_column(String(16), default="local")

    revision: Mapped[Revision] = relationship(back_populates="files")


class Artifact(Base):
    """The recipe of a derived revision (ONNX export, quantization, ...)."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision_id: Mapped[int] = mapped_column(
        ForeignKey("revisions.id", ondelete="CASCADE"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(32))  # "onnx"
    parent_commit: Mapped[str] = mapped_column(String(40))
    recipe_key: Mapped[str] = mapped_column(String(64), index=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    revision: Mapped[Revision] = relationship(back_populates="artifact")


class Event(Base):
    """Append-only audit log."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    repo: Mapped[Optional[str]] = mapped_column(String(220))
    commit: Mapped[Optional[str]] = mapped_column(String(40))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[Optional[str]] = mapped_column(Text)


class DepotInfo(Base):
    """Key/value facts about this depot (its stable id, for bundles)."""

    __tablename__ = "depot_info"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


# -- access control (registry/auth) -------------------------------------------------------------


class AccessToken(Base):
    """A depot token. Only a salted, keyed hash of its secret is stored (registry/auth/tokens.py)."""

    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # The public lookup part of the token string, so a presented token finds its row in one step.
    lookup: Mapped[str] = mapped_column(String(16), unique=True)
    salt: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # fnmatch patterns of repo ids this token may use; empty means every repo
    repos: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    revoked_at: Mapped[Optional[datetime]] = mapped_column(DateTime)

    grants: Mapped[list["AccessGrant"]] = relationship(
        back_populates="token", cascade="all, delete-orphan", passive_deletes=True
    )


class AccessGrant(Base):
    """An approval: this token may read this gated (or private) repo. Not a foreign key to repos:
    an approval may be given before the repo is mirrored (the proxy fetches it on first use)."""

    __tablename__ = "access_grants"
    __table_args__ = (
        UniqueConstraint("token_id", "repo_type", "repo_name", name="uq_access_grants_token_repo"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(
        ForeignKey("access_tokens.id", ondelete="CASCADE"), index=True
    )
    repo_type: Mapped[str] = mapped_column(String(16))
    repo_name: Mapped[str] = mapped_column(String(200))
    granted_by: Mapped[str] = mapped_column(String(200))
    granted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    token: Mapped[AccessToken] = relationship(back_populates="grants")


class AccessRecord(Base):
    """The access audit: downloads (with bytes sent), reads of private/gated repos, inference
    calls and refusals. Written in batches by the server (registry/auth/audit.py)."""

    __tablename__ = "access_log"
    __table_args__ = (
        Index("ix_access_log_repo_at", "repo", "at"),
        Index("ix_access_log_token_at", "token", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    token: Mapped[Optional[str]] = mapped_column(String(100))  # the token's name; None: anonymous
    client: Mapped[Optional[str]] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16))  # download, metadata, inference, refused, ...
    repo_type: Mapped[Optional[str]] = mapped_column(String(16))
    repo: Mapped[Optional[str]] = mapped_column(String(200))
    commit: Mapped[Optional[str]] = mapped_column(String(40))
    path: Mapped[Optional[str]] = mapped_column(String(1000))
    status: Mapped[int] = mapped_column(Integer)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    # ok, aborted (the client went away mid-download), refused
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[Optional[str]] = mapped_column(String(200))
