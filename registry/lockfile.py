"""Lockfiles: pin repos to exact commits and every file's bytes; check and sync a depot to them.

The lockfile is JSON, written with a stable key order, two-space indentation and one file per
line. JSON because every language and ``jq`` read it with no extra dependency and the standard
library both writes and reads it exactly (TOML would need a third-party writer); one file per
line because then a diff of two lockfiles shows exactly which files changed. Example::

    {
      "format": "modeldepot-lock/1",
      "entries": [
        {
          "type": "model",
          "repo": "org/clf",
          "requested": "prod",
          "commit": "7e40bd90fb88897f6b5febb8f79b458fb6071a29",
          "parent_commit": null,
          "refs": {"main": "branch", "prod": "alias"},
          "artifact": null,
          "size": 146099,
          "files": [
            {"path": "config.json", "size": 710, "sha256": "73ece4e5…"},
            ...
          ]
        }
      ]
    }
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import select

from . import jsonsafe
from .bundle import MAX_CONTAINERS, refuse_partial, revision_entry, validate_revision
from .depot import Depot
from .errors import DepotError, IntegrityError, InvalidInput
from .models import Artifact, Ref, Repo, Revision
from .naming import parse_spec, validate_repo_type

LOCK_FORMAT = "modeldepot-lock/1"
DEFAULT_LOCKFILE = "modeldepot.lock"
MAX_LOCKFILE = 64 * 1024 * 1024  # parsed within bounds (registry/jsonsafe.py)
LOCK_FILE_FIELDS = ("path", "size", "sha256")


def _lock_entry(entry: dict, requested: str | None) -> dict:
    return {
        "type": entry["type"],
        "repo": entry["repo"],
        "requested": requested,
        "commit": entry["commit"],
        "parent_commit": entry["parent_commit"],
        "refs": {r["name"]: r["kind"] for r in entry["refs"]},
        "artifact": entry["artifact"],
        "size": sum(f["size"] for f in entry["files"]),
        "files": [{k: f[k] for k in LOCK_FILE_FIELDS} for f in entry["files"]],
    }


def build_lock(depot: Depot, specs: Sequence[str], repo_type: str = "model") -> dict:
    """Resolve each ``REPO[@REV|ALIAS]`` and pin it (commit, refs, every file, recipe)."""
    validate_repo_type(repo_type)
    if not specs:
        raise InvalidInput("name at least one REPO[@REV|ALIAS] to lock")
    entries: dict[tuple, dict] = {}
    with depot.db.session() as s:
        for text in specs:
            spec = parse_spec(text)
            repo, rev = Depot.resolve_in(s, repo_type, spec.name, spec.revision)
            refuse_partial(repo, rev, "lock")
            key = (repo.type, repo.name, rev.commit)
            entries.setdefault(key, _lock_entry(revision_entry(repo, rev), spec.revision))
    return {"format": LOCK_FORMAT, "entries": [entries[k] for k in sorted(entries)]}


def dump_lock(lock: dict) -> str:
    """The lockfile text: indented JSON with each file (and the refs) on one line."""
    lines: list[str] = []

    def one_line(value: Any) -> str:
        lines.append(json.dumps(value, ensure_ascii=False))
        return f"\0line{len(lines) - 1}\0"

    entries = [{**e, "refs": one_line(e["refs"]), "files": [one_line(f) for f in e["files"]]}
               for e in lock["entries"]]
    text = json.dumps({**lock, "entries": entries}, indent=2, ensure_ascii=False)
    for i, line in enumerate(lines):
        text = text.replace(json.dumps(f"\0line{i}\0"), line, 1)
    return text + "\n"


def write_lock(lock: dict, path: Path | str) -> Path:
    """Write atomically: a reader sees the old lockfile or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(dump_lock(lock), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_lock(path: Path | str) -> dict:
    path = Path(path)
    hint = "make one with 'modeldepot lock REPO[@REV] -o FILE'"
    try:
        with open(path, "rb") as f:  # read no more than the bound, whatever the file claims
            raw = f.read(MAX_LOCKFILE + 1)
        if len(raw) > MAX_LOCKFILE:
            raise InvalidInput(f"{path} is over {MAX_LOCKFILE} bytes; it is not a lockfile")
        lock = jsonsafe.loads(raw, max_bytes=MAX_LOCKFILE, max_containers=MAX_CONTAINERS)
    except FileNotFoundError:
        raise InvalidInput(f"no such lockfile: {path}; {hint}") from None
    except jsonsafe.JSONInputError as e:
        raise InvalidInput(f"{path} is not a modeldepot lockfile (not valid JSON: {e})") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("format"), str):
        raise InvalidInput(f"{path} is not a modeldepot lockfile (no format); {hint}")
    if lock["format"] != LOCK_FORMAT:
        raise InvalidInput(f"{path} has lockfile format {lock['format']!r}; this modeldepot reads "
                           f"{LOCK_FORMAT!r} only: upgrade modeldepot")
    where = str(path)
    if not isinstance(lock.get("entries"), list):
        raise InvalidInput(f"{where} is invalid: 'entries' must be a list")
    for entry in lock["entries"]:
        validate_revision(entry, where, full=False)
    return lock


def expected_files(lock: dict) -> list[dict]:
    """The lock's entries in the shape ``Depot.verify(expected=...)`` takes."""
    return [{"type": e["type"], "repo": e["repo"], "commit": e["commit"], "files": e["files"]}
            for e in lock["entries"]]


def entry_state(depot: Depot, entry: dict) -> str:
    """'present' (the revision holds exactly the locked files), 'differs', or 'missing'."""
    with depot.db.session() as s:
        repo = s.scalar(select(Repo).where(Repo.type == entry["type"], Repo.name == entry["repo"]))
        rev = repo and s.scalar(select(Revision).where(
            Revision.repo_id == repo.id, Revision.commit == entry["commit"],
            Revision.complete.is_(True)))
        if not rev:
            return "missing"
        have = {(f.path, f.size, f.sha256) for f in rev.files}
    want = {(f["path"], f["size"], f["sha256"]) for f in entry["files"]}
    return "present" if have == want else "differs"


def _label(entry: dict) -> str:
    name = entry["repo"] if entry["type"] == "model" else f"datasets/{entry['repo']}"
    return f"{name}@{entry['commit']}"


def _record_lineage(depot: Depot, entry: dict) -> bool:
    """A derived revision pulled from another depot arrives as a plain revision (the Hub protocol
    has no lineage): record the parent and recipe the lockfile pins. True if anything changed."""
    art = entry.get("artifact")
    if not art and not entry.get("parent_commit"):
        return False
    with depot.db.session(write=True) as s:
        repo = s.scalar(select(Repo).where(Repo.type == entry["type"], Repo.name == entry["repo"]))
        rev = s.scalar(select(Revision).where(Revision.repo_id == repo.id,
                                              Revision.commit == entry["commit"]))
        changed = False
        if entry.get("parent_commit") and rev.parent_commit != entry["parent_commit"]:
            rev.parent_commit, changed = entry["parent_commit"], True
        if art and rev.artifact is None:
            s.add(Artifact(revision_id=rev.id, parent_commit=entry.get("parent_commit") or "",
                           kind=art["kind"], recipe_key=art["recipe_key"], recipe=art["recipe"]))
            changed = True
        if changed:
            depot.log_event(s, "lineage", repo=repo.display, commit=rev.commit,
                            parent=entry.get("parent_commit"), source="lockfile")
        return changed


def _restore_aliases(depot: Depot, entry: dict) -> list[str]:
    """Point the lock's registry aliases (e.g. prod) at the locked commit."""
    moved = []
    aliases = [name for name, kind in entry["refs"].items() if kind == "alias"]
    if not aliases:
        return moved
    with depot.db.session() as s:
        repo = s.scalar(select(Repo).where(Repo.type == entry["type"], Repo.name == entry["repo"]))
        current = {r.name: (r.commit, r.kind) for r in s.scalars(select(Ref).where(Ref.repo_id == repo.id))}
    for alias in aliases:
        if current.get(alias, (None, "alias"))[1] != "alias":
            continue  # an upstream branch or tag of that name wins over an alias
        if current.get(alias, (None,))[0] != entry["commit"]:
            depot.tag(entry["type"], entry["repo"], entry["commit"], alias)
            moved.append(alias)
    return moved


def sync(
    depot: Depot,
    lock: dict,
    *,
    endpoint: str,
    token: str | None = None,
    offline: bool = False,
    progress: Any = None,
) -> dict:
    """Make the depot hold every locked revision with exactly the locked files.

    Missing revisions are pulled by commit from ``endpoint`` (unless ``offline``). A derived
    (ONNX) revision can only come from an upstream that serves it by commit, such as another
    depot's ``serve``; its parent and recipe are then recorded from the lockfile. Registry
    aliases in the lockfile are pointed at the locked commits. Nothing is ever removed.
    """
    rows = []
    for entry in lock["entries"]:
        state = entry_state(depot, entry)
        row = {"type": entry["type"], "repo": entry["repo"], "commit": entry["commit"],
               "derived": bool(entry.get("artifact")), "state": state, "error": None, "aliases": []}
        if state == "missing" and not offline:
            from .hub import pull

            try:
                pull(depot, entry["type"], entry["repo"], revision=entry["commit"],
                     endpoint=endpoint, token=token, progress=progress)
            except DepotError as e:
                row["error"] = str(e)
            else:
                state = entry_state(depot, entry)
                row["state"] = "pulled" if state == "present" else state
                if state == "present":
                    _record_lineage(depot, entry)
        if row["state"] in ("present", "pulled"):
            row["aliases"] = _restore_aliases(depot, entry)
        rows.append(row)
    missing = [r for r in rows if r["state"] == "missing"]
    differs = [r for r in rows if r["state"] == "differs"]
    return {"ok": not missing and not differs, "offline": offline, "endpoint": endpoint,
            "entries": rows, "missing": len(missing), "differs": len(differs),
            "pulled": sum(r["state"] == "pulled" for r in rows)}


def check_synced(result: dict) -> None:
    """Raise the error ``sync`` ends with when the depot does not hold what is locked."""
    if result["differs"]:
        raise IntegrityError(
            f"{result['differs']} locked revision(s) are in the depot with other files than the "
            "lockfile pins; the lockfile or the depot was altered: check with "
            "'modeldepot verify --lock FILE'")
    if result["missing"]:
        n = result["missing"]
        if result["offline"]:
            raise InvalidInput(
                f"{n} locked revision(s) missing and sync is offline; run 'modeldepot sync' with an "
                "upstream (--endpoint URL or MODELDEPOT_ENDPOINT), or import a bundle that holds "
                "them ('modeldepot bundle import')")
        raise InvalidInput(f"{n} locked revision(s) could not be pulled from {result['endpoint']}; "
                           "see the lines above, or import a bundle that holds them")


def describe_row(row: dict) -> str:
    """One human line per lock entry, as ``sync`` prints them."""
    name = row["repo"] if row["type"] == "model" else f"datasets/{row['repo']}"
    label = f"{name}@{row['commit'][:12]}"
    if row["state"] == "missing":
        why = ""
        if row["error"]:
            why = f" ({row['error']})"
        if row["derived"]:
            why += (" (derived ONNX revision: only another depot's 'serve' can supply it; or carry "
                    "it in a bundle, or re-export it)")
        return f"MISSING  {label}{why}"
    if row["state"] == "differs":
        return f"DIFFERS  {label} (its files are not the locked ones)"
    aliases = f" (aliases: {', '.join(row['aliases'])})" if row["aliases"] else ""
    return f"{row['state']:<8} {label}{aliases}"
