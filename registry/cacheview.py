"""Short commit ids in the HF-cache view.

Clients ask for abbreviated commits: transformers' pipeline defaults pin e.g.
``revision="714eb0f"`` for ``pipeline("sentiment-analysis")``. Through ``serve`` a unique prefix
resolves like any revision, but offline huggingface_hub only reads ``refs/<revision>`` from the
cache, so the view keeps a ref file named after the 7-hex short id of every revision (git's
default abbreviation, the length those defaults use), plus any other prefix a pull was asked for.

These files are not refs of the registry: ``/refs`` and ``show`` never list them. A short id that
two revisions of a repo share is left out (it would be ambiguous), and one whose revision is gone
is removed.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from .models import Ref, Repo, Revision

SHORT_ID_LEN = 7
SHORT_ID_RE = re.compile(r"^[0-9a-f]{7,39}$")


def is_short_id_of(prefix: str | None, commit: str) -> bool:
    return bool(prefix) and bool(SHORT_ID_RE.match(prefix)) and commit.startswith(prefix)


def write_short_refs(depot, repo_type: str, name: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Bring ``refs/<short id>`` files of one repo's view in line with its revisions.

    ``extra`` are further prefixes to keep (a pull ``@<prefix>``). The caller holds the repo lock.
    Returns the short ids written.
    """
    with depot.db.session() as s:
        repo = s.scalar(select(Repo).where(Repo.type == repo_type, Repo.name == name))
        if repo is None:
            return []
        commits = list(s.scalars(select(Revision.commit).where(
            Revision.repo_id == repo.id, Revision.complete.is_(True))))
        ref_names = set(s.scalars(select(Ref.name).where(Ref.repo_id == repo.id)))
    refs_dir = depot.store.repo_dir(repo_type, name) / "refs"
    wanted: dict[str, str] = {}
    prefixes = {c[:SHORT_ID_LEN] for c in commits} | {p for p in extra if SHORT_ID_RE.match(p)}
    for prefix in prefixes:
        matches = [c for c in commits if c.startswith(prefix)]
        if len(matches) == 1 and prefix not in ref_names:
            wanted[prefix] = matches[0]
    if refs_dir.is_dir():
        # Earlier ones stay (a pull @prefix), unless ambiguous now or their revision went.
        for p in refs_dir.iterdir():
            if SHORT_ID_RE.match(p.name) and p.name not in ref_names and p.name not in wanted:
                target = p.read_text().strip() if p.is_file() else ""
                matches = [c for c in commits if c.startswith(p.name)]
                if matches == [target]:
                    continue
                depot.store.remove_ref(repo_type, name, p.name)
    for prefix, commit in wanted.items():
        path = refs_dir / prefix
        if not (path.is_file() and path.read_text() == commit):
            depot.store.write_ref(repo_type, name, prefix, commit)
    return sorted(wanted)
