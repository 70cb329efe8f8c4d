"""Former and legacy repo ids: ``gpt2`` still reaches ``openai-community/gpt2``.

The Hub keeps answering a renamed repo under its old id (``/api/models/{old}`` and
``/{old}/resolve/...`` answer with a relative redirect to the new id), and most user code still
says ``gpt2``, ``bert-base-uncased`` or ``distilbert-base-uncased-finetuned-sst-2-english``. A repo
here carries such names in the ``repo_names`` table:

* recorded automatically when an upstream redirects a pull (``source="redirect"``; the pull
  publishes under the new id and records the one asked for), or set by hand
  (``source="manual"``, ``modeldepot names add``);
* answered by ``serve`` as the Hub answers them (registry/server/legacy_names.py);
* present in the HF-cache view for offline use: ``hub/models--gpt2`` is a relative symlink to
  ``models--openai-community--gpt2``, so both ids share the same blobs, snapshots and refs and
  ``HF_HUB_CACHE=<home>/hub HF_HUB_OFFLINE=1`` loads ``from_pretrained("gpt2")``.

The pull-through proxy records the redirects it sees with :func:`add_repo_name`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Conflict, InvalidInput, NotFound
from .models import NAME_SOURCES, Repo, RepoName, utcnow
from .naming import validate_repo_id, validate_repo_type
from .store import repo_folder_name


def canonical_name(s: Session, repo_type: str, name: str) -> str | None:
    """The id of the repo that ``name`` is a former name of, or None."""
    return s.scalar(
        select(Repo.name).join(RepoName, RepoName.repo_id == Repo.id)
        .where(RepoName.type == repo_type, RepoName.name == name)
    )


def add_repo_name(depot, repo_type: str, repo_id: str, former_id: str,
                  source: str = "manual") -> dict:
    """Make ``former_id`` reach ``repo_id`` (idempotent); returns {repo, name, source, created}.

    Refused (Conflict) when ``former_id`` is itself a repo of the depot or already a name of
    another repo; ``repo_id`` must be in the depot.
    """
    validate_repo_type(repo_type)
    validate_repo_id(repo_id)
    validate_repo_id(former_id)
    if source not in NAME_SOURCES:
        raise InvalidInput(f"invalid name source {source!r}: use one of {', '.join(NAME_SOURCES)}")
    if former_id == repo_id:
        raise InvalidInput(f"{former_id!r} is the repo's own id, not a former name")
    label = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
    with depot.repo_lock(repo_type, former_id):
        with depot.db.session(write=True) as s:
            repo = depot.get_repo(s, repo_type, repo_id)
            if s.scalar(select(Repo.id).where(Repo.type == repo_type, Repo.name == former_id)):
                raise Conflict(f"{former_id} is a {repo_type} repo of its own in the depot; "
                               f"remove it first ('modeldepot rm {former_id}') to make it a "
                               f"name of {repo_id}")
            row = s.scalar(select(RepoName).where(RepoName.type == repo_type,
                                                  RepoName.name == former_id))
            created = row is None
            if row is not None and row.repo_id != repo.id:
                other = s.get(Repo, row.repo_id)
                raise Conflict(f"{former_id} is already a name of {other.name}; remove it first "
                               f"with 'modeldepot names rm {former_id}'")
            if row is None:
                s.add(RepoName(repo_id=repo.id, type=repo_type, name=former_id, source=source,
                               created_at=utcnow()))
                depot.log_event(s, "name", repo=repo.display, name=former_id, source=source)
            _link_view(depot.store.hub, repo_type, former_id, repo_id)
    return {"repo": label, "name": former_id, "source": source if created else row.source,
            "created": created}


def remove_repo_name(depot, repo_type: str, former_id: str) -> dict:
    validate_repo_type(repo_type)
    validate_repo_id(former_id)
    with depot.repo_lock(repo_type, former_id):
        with depot.db.session(write=True) as s:
            row = s.scalar(select(RepoName).where(RepoName.type == repo_type,
                                                  RepoName.name == former_id))
            if row is None:
                raise NotFound(f"{former_id} is not a former name of any {repo_type} repo; "
                               "see 'modeldepot names list'")
            repo = s.get(Repo, row.repo_id)
            s.delete(row)
            depot.log_event(s, "unname", repo=repo.display, name=former_id)
        link = depot.store.hub / repo_folder_name(repo_type, former_id)
        if link.is_symlink():
            link.unlink()
    return {"repo": repo.name, "name": former_id}


def list_repo_names(depot, repo_type: str | None = None, repo_id: str | None = None) -> list[dict]:
    with depot.db.session() as s:
        q = (select(RepoName, Repo.name).join(Repo, Repo.id == RepoName.repo_id)
             .order_by(RepoName.type, RepoName.name))
        if repo_type:
            q = q.where(RepoName.type == validate_repo_type(repo_type))
        if repo_id:
            repo = depot.get_repo(s, repo_type or "model", repo_id)
            q = q.where(RepoName.repo_id == repo.id)
        return [{"name": n.name, "type": n.type, "repo": repo_name, "source": n.source}
                for n, repo_name in s.execute(q)]


def view_names(s: Session) -> dict[str, str]:
    """HF-cache folder name of every former name -> the folder it links to (for ``gc``)."""
    return {
        repo_folder_name(t, former): repo_folder_name(t, current)
        for t, former, current in s.execute(
            select(RepoName.type, RepoName.name, Repo.name).join(Repo, Repo.id == RepoName.repo_id)
        )
    }


def refuse_former_name(s: Session, repo_type: str, name: str) -> None:
    """A new repo may not take a name that already leads to another one (its HF-cache folder
    is a link into that repo's view)."""
    current = canonical_name(s, repo_type, name)
    if current is not None:
        raise Conflict(f"{name} is a former name of {current}; remove it first with "
                       f"'modeldepot names rm {name}' to use it as a repo id of its own")


def _link_view(hub: Path, repo_type: str, former_id: str, repo_id: str) -> None:
    hub.mkdir(parents=True, exist_ok=True)
    link = hub / repo_folder_name(repo_type, former_id)
    target = repo_folder_name(repo_type, repo_id)
    if link.is_symlink():
        if os.readlink(link) == target:
            return
    elif link.exists():
        raise Conflict(f"{link} exists and is not a link into {target}; run 'modeldepot gc' "
                       "(it removes stray views) and try again")
    tmp = hub / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)  # relative: the home can move
    os.replace(tmp, link)



# -- across the air gap (registry/bundle.py) -----------------------------------------------------


def bundle_names(repo: Repo) -> list[dict]:
    """A repo's former names as a bundle manifest carries them."""
    return [{"name": n.name, "source": n.source}
            for n in sorted(repo.former_names, key=lambda n: n.name)]


def valid_bundle_names(value) -> bool:
    if not isinstance(value, list):
        return False
    for item in value:
        if not (isinstance(item, dict) and set(item) == {"name", "source"}
                and item["source"] in NAME_SOURCES and isinstance(item["name"], str)):
            return False
        try:
            validate_repo_id(item["name"])
        except InvalidInput:
            return False
    return True


def apply_bundle_names(depot, repos: list[dict]) -> list[dict]:
    """Record the former names a bundle's repos carry; returns those newly added. A name that is
    a repo of its own here, or another repo's name, keeps its meaning on this side."""
    added = []
    for repo in repos:
        for item in repo.get("former_names") or []:
            try:
                result = add_repo_name(depot, repo["type"], repo["name"], item["name"],
                                       item["source"])
            except (Conflict, NotFound):
                continue
            if result["created"]:
                added.append({"type": repo["type"], "repo": repo["name"], "name": item["name"]})
    return added
