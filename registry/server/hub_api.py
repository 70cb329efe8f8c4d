"""The read-only Hub API, answered from the registry, for unmodified HF clients.

``shared/docs/hub-protocol.md`` §8 is the checklist. Paths are parsed from the *raw* request
path (revisions arrive percent-encoded with ``/`` inside, e.g. ``refs%2Fpr%2F1``), and a file is
served only by looking its path up in the registry's File rows and opening the blob by sha256:
nothing from the URL is ever joined onto a filesystem path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import unquote, urlencode

from aiohttp import web
from sqlalchemy import String, cast, func, or_, select

from ..auth.visibility import listing_filter
from ..depot import Depot
from ..units import iso_z
from ..errors import (
    DepotError,
    EntryNotFound,
    InvalidInput,
    RepoNotFound,
    RevisionNotFound,
)
from ..models import File, Ref, Repo, Revision
from ..naming import COMMIT_RE, REF_RE, validate_repo_id
from ..store import git_blob_sha1, in_git_dir, lfs_pointer
from . import client_compat, http
from .app import DEPOT, OPTIONS
from .auth_mw import viewer_of
from .files import BlobResponse
from .http import error_response

PAGE_SIZE = 1000
TREE_PAGE_SIZE = 1000
MAX_OFFSET = 2**53  # far past any listing, well inside every database's integer
API_ACTIONS = ("revision", "tree", "refs", "paths-info", "commits")
TYPES = {"models": "model", "datasets": "dataset"}
SORTS = {
    "downloads": "downloads", "likes": "likes", "lastModified": "lastModified",
    "last_modified": "lastModified", "createdAt": "createdAt", "created_at": "createdAt",
    "trendingScore": "downloads", "trending_score": "downloads", "id": "id", "modelId": "id",
}
EXPANDABLE = {
    "author", "cardData", "config", "createdAt", "disabled", "downloads", "downloadsAllTime",
    "gated", "lastModified", "library_name", "likes", "pipeline_tag", "private", "sha",
    "siblings", "tags", "trendingScore", "safetensors", "transformersInfo", "spaces",
    "xetEnabled", "paperswithcode_id", "description", "usedStorage", "gguf", "inference",
    "inferenceProviderMapping", "mask_token", "model-index", "widgetData", "resourceGroup",
    "citation",
}


# -- parsing the raw path ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way to read a raw path: which repo, which action, and the rest."""

    repo: str
    action: str  # "info", "revision", "tree", "refs", "paths-info", "commits", "resolve"
    rev: str | None = None
    path: str = ""


def _segments(raw_tail: str) -> list[str]:
    return raw_tail.split("?", 1)[0].split("/")


def _repo_from(segments: list[str]) -> str | None:
    parts = [unquote(s) for s in segments]
    if any(not p or "/" in p for p in parts):
        return None
    name = "/".join(parts)
    try:
        return validate_repo_id(name)
    except InvalidInput:
        return None


def _take_rev(rest: list[str]) -> tuple[str | None, list[str]]:
    """The revision segment (percent-decoded), allowing an unencoded ``refs/pr/N``."""
    if not rest:
        return None, []
    if rest[0] == "refs" and len(rest) >= 3 and rest[1] in ("pr", "convert"):
        return "/".join(rest[:3]), rest[3:]
    return unquote(rest[0]), rest[1:]


def parse_api(raw_tail: str) -> list[Target]:
    """``org/name[/action/...]`` after ``/api/{type}/``: every syntactically valid reading."""
    segs = _segments(raw_tail)
    out = []
    for k in (2, 1):
        if len(segs) < k:
            continue
        repo = _repo_from(segs[:k])
        if repo is None:
            continue
        rest = segs[k:]
        if not rest or rest == [""]:
            out.append(Target(repo, "info"))
            continue
        action = rest[0]
        if action not in API_ACTIONS:
            continue
        if action == "refs":
            if len(rest) == 1:
                out.append(Target(repo, "refs"))
            continue
        rev, after = _take_rev(rest[1:])
        if rev is None or (action != "tree" and after not in ([], [""])):
            continue
        path = unquote("/".join(after)).strip("/") if action == "tree" else ""
        out.append(Target(repo, action, rev, path))
    return out


def parse_resolve(raw_tail: str) -> tuple[str, list[Target]]:
    """``[datasets/]org/name/resolve/{rev}/{path}``: the repo type and the possible readings."""
    segs = _segments(raw_tail)
    repo_type = "model"
    if segs and segs[0] == "datasets":
        repo_type, segs = "dataset", segs[1:]
    out = []
    for k in (2, 1):
        if len(segs) > k + 2 and segs[k] == "resolve":
            repo = _repo_from(segs[:k])
            if repo is None:
                continue
            rev, after = _take_rev(segs[k + 1:])
            if rev is not None and after:
                out.append(Target(repo, "resolve", rev, unquote("/".join(after))))
    return repo_type, out


def _check_rev(rev: str | None) -> None:
    """Refuse absurd revisions before they reach a query."""
    if rev is None:
        return
    if len(rev) > 200 or not (COMMIT_RE.match(rev) or REF_RE.match(rev)) or ".." in rev:
        raise RevisionNotFound(f"invalid revision {rev[:80]!r}")


# -- registry lookups (run in a worker thread) --------------------------------------------------


def _resolve_target(s, repo_type: str, targets: list[Target]) -> tuple[Target, Repo, Revision | None]:
    """The first reading whose repo exists; its revision when the action needs one."""
    if not targets:
        raise RepoNotFound("not a valid repo id: use org/name")
    first_error: DepotError | None = None
    for t in targets:
        try:
            repo = Depot.get_repo(s, repo_type, t.repo)
        except (RepoNotFound, InvalidInput) as e:
            first_error = first_error or e
            continue
        if t.action == "refs":
            return t, repo, None
        _check_rev(t.rev)
        _repo, revision = Depot.resolve_in(s, repo_type, t.repo, t.rev)
        return t, repo, revision
    assert first_error is not None
    if isinstance(first_error, InvalidInput):
        raise RepoNotFound(str(first_error))
    raise first_error


def _lfs_json(f: File, oid_key: str) -> dict:
    return {oid_key: f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}


def _blob_id(f: File) -> str:
    """What git (and so the Hub) calls this file: an LFS file's oid is its pointer's sha1."""
    return git_blob_sha1(lfs_pointer(f.sha256, f.size)) if f.lfs else f.git_sha1


def _git_tree_ids(files: list[File]) -> dict[str, str]:
    """The git tree sha1 of every directory (``""`` is the root), as upstream would report."""
    tree: dict = {}
    for f in files:
        node = tree
        parts = f.path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = f
    ids: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> bytes:
        entries = []
        for name, child in node.items():
            if isinstance(child, dict):
                sha = walk(child, f"{prefix}{name}/")
                entries.append((name.encode() + b"/", b"40000 " + name.encode(), sha))
            else:
                entries.append((name.encode(), b"100644 " + name.encode(),
                                bytes.fromhex(_blob_id(child))))
        body = b"".join(head + b"\0" + sha for _key, head, sha in sorted(entries))
        sha = hashlib.sha1(b"tree %d\0" % len(body) + body)
        ids[prefix.rstrip("/")] = sha.hexdigest()
        return sha.digest()

    walk(tree, "")
    return ids


def _served(files) -> list[File]:
    """A revision's files as the server hands them out: never a path inside ``.git`` (one
    registered before such paths were refused could plant a git config in a client's folder)."""
    return [f for f in files if not in_git_dir(f.path)]


def _tree_entries(revision: Revision, path: str, recursive: bool, expand: bool) -> list[dict]:
    files = _served(revision.listed_files)
    prefix = f"{path}/" if path else ""
    if path and not any(f.path.startswith(prefix) for f in files):
        raise EntryNotFound(f"{path!r} is not a folder of {revision.commit}",
                            commit=revision.commit)
    tree_ids = _git_tree_ids(files)
    last_commit = {"id": revision.commit, "title": f"modeldepot {revision.source}",
                   "date": iso_z(revision.created_at)}
    entries: dict[str, dict] = {}
    for f in files:
        if not f.path.startswith(prefix):
            continue
        rel = f.path[len(prefix):].split("/")
        depth = len(rel) if recursive else 1
        for i in range(1, min(depth, len(rel) - 1) + 1):
            d = prefix + "/".join(rel[:i])
            entries.setdefault(d, {"type": "directory", "oid": tree_ids[d], "size": 0, "path": d})
        if recursive or len(rel) == 1:
            entries[f.path] = _file_entry(f)
    out = sorted(entries.values(), key=lambda e: e["path"])
    if expand:
        for e in out:
            e["lastCommit"] = dict(last_commit)
    return out


def _file_entry(f: File) -> dict:
    entry = {"type": "file", "oid": _blob_id(f), "size": f.size, "path": f.path}
    if f.lfs:
        entry["lfs"] = _lfs_json(f, "oid")
    return entry


def _paths_info(revision: Revision, paths: list[str], expand: bool) -> list[dict]:
    files = {f.path: f for f in _served(revision.listed_files)}
    tree_ids = None
    out = []
    for p in paths:
        p = p.strip("/")
        if p in files:
            out.append(_file_entry(files[p]))
        elif any(x.startswith(p + "/") for x in files):
            tree_ids = tree_ids or _git_tree_ids(list(files.values()))
            out.append({"type": "directory", "oid": tree_ids[p], "size": 0, "path": p})
    if expand:
        for e in out:
            e["lastCommit"] = {"id": revision.commit, "title": f"modeldepot {revision.source}",
                               "date": iso_z(revision.created_at)}
    return out


def _refs_json(repo: Repo, include_prs: bool) -> dict:
    out: dict = {"branches": [], "converts": [], "tags": []}
    for ref in sorted(repo.refs, key=lambda r: r.name):
        if ref.kind == "branch":
            out["branches"].append({"name": ref.name, "ref": f"refs/heads/{ref.name}",
                                    "targetCommit": ref.commit})
        else:  # upstream tags and registry aliases (``prod``) are both named commits
            out["tags"].append({"name": ref.name, "ref": f"refs/tags/{ref.name}",
                                "targetCommit": ref.commit})
    if include_prs:
        out["pullRequests"] = []
    return out


def _last_modified(repo: Repo, revision: Revision | None) -> str | None:
    return iso_z(repo.upstream_last_modified or (revision.created_at if revision else repo.updated_at))


def _repo_json(repo: Repo, revision: Revision | None, files: list[File] | None, *,
               blobs: bool = False, card: bool = True, config: bool = True) -> dict:
    """A ModelInfo / DatasetInfo body with every field we know."""
    meta = repo.meta or {}
    rev_meta = (revision.meta if revision is not None else None) or {}
    body: dict = {
        "_id": f"{repo.id:024x}",
        "id": repo.name,
        "author": repo.author,
        "sha": revision.commit if revision is not None else None,
        "lastModified": _last_modified(repo, revision),
        "createdAt": iso_z(repo.upstream_created_at or repo.created_at),
        "private": bool(repo.private),
        "gated": repo.gated or False,
        "disabled": False,
        "downloads": repo.downloads or 0,
        "likes": repo.likes or 0,
        "tags": list(repo.tags or []),
    }
    if repo.type == "model":
        body["modelId"] = repo.name
        body["library_name"] = repo.library_name
        body["pipeline_tag"] = repo.pipeline_tag
        body["trendingScore"] = 0
        body["spaces"] = []
        if config and isinstance(meta.get("config"), dict):
            body["config"] = meta["config"]
        ti = meta.get("transformersInfo")
        if isinstance(ti, dict) and "auto_model" in ti:
            body["transformersInfo"] = ti
        params = rev_meta.get("parameters")
        if isinstance(params, dict) and params:
            body["safetensors"] = {"parameters": params, "total": sum(params.values())}
    else:
        body["paperswithcode_id"] = meta.get("paperswithcode_id")
        if meta.get("description"):
            body["description"] = meta["description"]
    if card and repo.card_data:
        body["cardData"] = repo.card_data
    if files is not None:
        body["siblings"] = [_sibling(f, blobs) for f in files]
        if blobs:
            body["usedStorage"] = sum(f.size for f in files)
    body["xetEnabled"] = False
    return body


def _sibling(f: File, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": f.path}
    out = {"rfilename": f.path, "size": f.size, "blobId": _blob_id(f)}
    if f.lfs:
        out["lfs"] = _lfs_json(f, "sha256")
    return out


def _only_expanded(body: dict, expand: list[str]) -> dict:
    keep = {"_id", "id"} | set(expand)
    if "downloadsAllTime" in expand:
        body["downloadsAllTime"] = body.get("downloads", 0)
    return {k: v for k, v in body.items() if k in keep}


def _api_call(depot: Depot, repo_type: str, targets: list[Target], params: dict) -> tuple[dict | list, int | None]:
    with depot.db.session() as s:
        target, repo, revision = _resolve_target(s, repo_type, targets)
        action = target.action
        if action == "refs":
            return _refs_json(repo, params["include_prs"]), None
        if action in ("info", "revision"):
            body = _repo_json(repo, revision, _served(revision.listed_files), blobs=params["blobs"])
            if params["expand"]:
                body = _only_expanded(body, params["expand"])
            return body, None
        if action == "tree":
            entries = _tree_entries(revision, target.path, params["recursive"], params["expand_tree"])
            start = params["cursor"]
            page = entries[start:start + TREE_PAGE_SIZE]
            more = start + TREE_PAGE_SIZE if start + TREE_PAGE_SIZE < len(entries) else None
            return page, more
        if action == "paths-info":
            return _paths_info(revision, params["paths"], params["expand_tree"]), None
        if action == "commits":
            return [{
                "id": revision.commit,
                "title": f"modeldepot {revision.source}",
                "message": "",
                "date": iso_z(revision.created_at),
                "authors": [],
            }], None
    raise RepoNotFound("unknown API path")


def _find_file(depot: Depot, repo_type: str, targets: list[Target]) -> tuple[str, File]:
    with depot.db.session() as s:
        target, _repo, revision = _resolve_target(s, repo_type, targets)
        f = s.scalar(select(File).where(File.revision_id == revision.id, File.path == target.path))
        if f is None or in_git_dir(f.path):
            raise EntryNotFound(f"{target.path[:200]!r} is not a file of {target.repo}@"
                                f"{revision.commit}", commit=revision.commit)
        return revision.commit, f


# -- listing -----------------------------------------------------------------------------------


@dataclass
class ListQuery:
    repo_type: str
    search: list[str]
    author: str | None
    filters: list[str]
    pipeline_tag: str | None
    sort: str | None
    descending: bool
    limit: int
    cursor: int
    full: bool
    card: bool
    config: bool
    expand: list[str]
    gated: bool | None
    viewer: object = None  # the caller (registry.auth.Principal); None: no access control


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _matches_filters(repo: Repo, filters: list[str]) -> bool:
    have = set(repo.tags or []) | {repo.library_name, repo.pipeline_tag}
    if repo.license:
        have.add(f"license:{repo.license}")
    return all(f in have for f in filters)


def _default_revisions(s, repo_ids: list[int]) -> dict[int, Revision]:
    """Each repo's ``main`` (else its newest complete) revision, in two queries."""
    out: dict[int, Revision] = {}
    if not repo_ids:
        return out
    rows = s.execute(
        select(Ref.repo_id, Revision)
        .join(Revision, (Revision.repo_id == Ref.repo_id) & (Revision.commit == Ref.commit))
        .where(Ref.repo_id.in_(repo_ids), Ref.name == "main", Revision.complete.is_(True))
    )
    for repo_id, rev in rows:
        out[repo_id] = rev
    missing = [i for i in repo_ids if i not in out]
    if missing:
        for rev in s.scalars(
            select(Revision).where(Revision.repo_id.in_(missing), Revision.complete.is_(True))
            .order_by(Revision.created_at)
        ):
            out[rev.repo_id] = rev  # the newest wins
    return out


def list_repos(depot: Depot, q: ListQuery) -> tuple[list[dict], int | None]:
    """One page of ``/api/models`` or ``/api/datasets`` and the next cursor (or None)."""
    stmt = select(Repo).where(Repo.type == q.repo_type)
    visible = listing_filter(q.viewer)
    if visible is not None:
        stmt = stmt.where(visible)
    for term in q.search:
        stmt = stmt.where(Repo.name.ilike(_like(term), escape="\\"))
    if q.author:
        stmt = stmt.where(Repo.author == q.author)
    if q.pipeline_tag:
        stmt = stmt.where(Repo.pipeline_tag == q.pipeline_tag)
    if q.gated is not None:
        stmt = stmt.where(Repo.gated.is_not(None) if q.gated else Repo.gated.is_(None))
    tags_text = cast(Repo.tags, String)
    for f in q.filters:
        # A portable pre-filter on the JSON text; the exact check is done in Python below.
        stmt = stmt.where(or_(tags_text.like(_like(json.dumps(f)), escape="\\"),
                              Repo.library_name == f, Repo.pipeline_tag == f,
                              Repo.license == f.removeprefix("license:")))
    column = {
        "downloads": Repo.downloads,
        "likes": Repo.likes,
        "lastModified": func.coalesce(Repo.upstream_last_modified, Repo.updated_at),
        "createdAt": func.coalesce(Repo.upstream_created_at, Repo.created_at),
        "id": Repo.name,
        None: Repo.name,
    }[q.sort]
    order = column.desc().nulls_last() if q.descending else column.asc().nulls_last()
    stmt = stmt.order_by(order, Repo.name)
    with depot.db.session() as s:
        if q.filters:
            repos, seen = [], 0
            for repo in s.scalars(stmt.execution_options(yield_per=500)):
                if not _matches_filters(repo, q.filters):
                    continue
                seen += 1
                if seen > q.cursor:
                    repos.append(repo)
                    if len(repos) > q.limit:
                        break
        else:
            repos = list(s.scalars(stmt.offset(q.cursor).limit(q.limit + 1)))
        more = q.cursor + q.limit if len(repos) > q.limit else None
        repos = repos[:q.limit]
        need_rev = q.full or bool({"sha", "siblings", "lastModified", "safetensors"} & set(q.expand))
        revisions = _default_revisions(s, [r.id for r in repos]) if need_rev else {}
        files: dict[int, list[File]] = {}
        if q.full or "siblings" in q.expand:
            rev_ids = [r.id for r in revisions.values()]
            for i in range(0, len(rev_ids), 500):
                for f in s.scalars(select(File).where(File.revision_id.in_(rev_ids[i:i + 500]))
                                   .order_by(File.path)):
                    if not in_git_dir(f.path):
                        files.setdefault(f.revision_id, []).append(f)
        with_files = q.full or "siblings" in q.expand
        items = []
        for repo in repos:
            rev = revisions.get(repo.id)
            siblings = files.get(rev.id, []) if rev is not None else []
            body = _repo_json(
                repo, rev, siblings if with_files else None,
                card=q.card or "cardData" in q.expand, config=q.config or "config" in q.expand,
            )
            if q.expand:
                body = _only_expanded(body, q.expand)
            elif not q.full:
                for key in ("sha", "lastModified", "gated", "disabled", "author", "spaces",
                            "xetEnabled", "safetensors", "transformersInfo", "siblings",
                            "paperswithcode_id", "description"):
                    body.pop(key, None)
            items.append(body)
        return items, more


# -- HTTP handlers ------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _next_link(request: web.Request, cursor: int) -> str:
    options = request.app[OPTIONS]
    base = http.public_base(request, options.public_url, options.http.allowed_hosts)
    query = [(k, v) for k, v in request.query.items() if k != "cursor"] + [("cursor", str(cursor))]
    return f'<{base}{request.rel_url.raw_path}?{urlencode(query)}>; rel="next"'


def _page_response(request: web.Request, body, more: int | None) -> web.Response:
    headers = {"Link": _next_link(request, more)} if more is not None else None
    return web.json_response(body, headers=headers)


def _int_param(request: web.Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not 0 <= value <= MAX_OFFSET:
        raise InvalidInput(f"{name} must be between 0 and {MAX_OFFSET}")
    return min(value, maximum) if maximum else value


async def list_handler(request: web.Request) -> web.Response:
    repo_type = TYPES[request.match_info["kind"]]
    try:
        sort = request.query.get("sort") or None
        if sort is not None and sort not in SORTS:
            raise InvalidInput(f"unknown sort {sort!r}: use one of downloads, likes, "
                               "lastModified, createdAt")
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        unknown = sorted(set(expand) - EXPANDABLE)
        if unknown:
            raise InvalidInput(f"unknown expand value(s): {', '.join(unknown)}")
        gated = request.query.get("gated")
        direction = request.query.get("direction")
        q = ListQuery(
            repo_type=repo_type,
            search=[s for s in request.query.getall("search", []) if s],
            author=request.query.get("author") or None,
            filters=[f for f in request.query.getall("filter", []) if f],
            pipeline_tag=request.query.get("pipeline_tag") or None,
            sort=SORTS.get(sort) if sort else None,
            descending=(direction != "1") if sort else direction == "-1",
            limit=_int_param(request, "limit", PAGE_SIZE, PAGE_SIZE),
            cursor=_int_param(request, "cursor", 0),
            full=_truthy(request.query.get("full")),
            card=_truthy(request.query.get("cardData")),
            config=_truthy(request.query.get("config")),
            expand=expand,
            gated=None if gated is None else _truthy(gated),
            viewer=viewer_of(request),
        )
        items, more = await asyncio.to_thread(list_repos, request.app[DEPOT], q)
    except DepotError as e:
        return error_response(e)
    if q.limit == 0:
        more = None
    return _page_response(request, items, more)


async def api_handler(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    repo_type = TYPES[kind]
    raw = request.raw_path.split("?", 1)[0]
    tail = raw[len(f"/api/{kind}/"):]
    try:
        readings = parse_api(tail)
        post = request.method == "POST"
        targets = [t for t in readings if (t.action == "paths-info") == post]
        if readings and (not targets or request.method not in ("GET", "HEAD", "POST")):
            # a known route, another method: paths-info is POST only, the rest GET (and HEAD)
            allowed = {"POST"} if any(t.action == "paths-info" for t in readings) else {"GET"}
            raise http.method_not_allowed(request, allowed)
        form = await http.read_form(request) if post else {}
        paths = form.getall("paths", []) if form else []
        expand = request.query.getall("expand", [])
        params = {
            "blobs": _truthy(request.query.get("blobs")),
            "include_prs": _truthy(request.query.get("include_prs")),
            "recursive": _truthy(request.query.get("recursive")),
            "expand_tree": _truthy(request.query.get("expand") or (form.get("expand") if form else None)),
            "expand": [e for e in expand if e in EXPANDABLE],
            "cursor": _int_param(request, "cursor", 0),
            "paths": [p for p in paths if isinstance(p, str)],
        }
        if targets and targets[0].action == "tree":
            params["expand"] = []
        body, more = await asyncio.to_thread(_api_call, request.app[DEPOT], repo_type,
                                             targets, params)
    except DepotError as e:
        if isinstance(e, RepoNotFound):
            moved = await client_compat.former_name_redirect(
                request, repo_type, f"/api/{kind}/", [t.repo for t in targets])
            if moved is not None:
                return moved
        return error_response(e)
    return _page_response(request, body, more)


async def resolve_handler(request: web.Request) -> web.StreamResponse:
    raw = request.raw_path
    repo_type, targets = parse_resolve(raw.lstrip("/"))
    if not targets:
        if "/resolve/" in raw.split("?", 1)[0]:
            return error_response(RepoNotFound("not a valid repo id: use org/name"))
        await http.not_found_or_405(request, request.match_info.route.resource)
    if request.method not in ("GET", "HEAD"):
        raise http.method_not_allowed(request, {"GET"})
    depot: Depot = request.app[DEPOT]
    try:
        commit, f = await asyncio.to_thread(_find_file, depot, repo_type, targets)
    except DepotError as e:
        if isinstance(e, RepoNotFound):
            moved = await client_compat.former_name_redirect(
                request, repo_type, "/datasets/" if repo_type == "dataset" else "/",
                [t.repo for t in targets])
            if moved is not None:
                return moved
        return error_response(e)
    client_compat.count_download(request, repo_type, f.revision_id, f.path)
    etag = f.sha256 if f.lfs else f.git_sha1
    headers = {
        "X-Repo-Commit": commit,
        "X-Linked-Size": str(f.size),
        "Accept-Ranges": "bytes",
        "Access-Control-Expose-Headers": "X-Repo-Commit, X-Linked-Size, X-Linked-Etag, ETag, "
                                         "X-Error-Code, X-Error-Message, Content-Range",
    }
    if f.lfs:
        headers["X-Linked-Etag"] = f'"{etag}"'
    write_timeout = request.app[OPTIONS].http.write_timeout

    async def from_local_file(path):
        # conditionals and ranges by the content-addressed ETag, sendfile (registry/server/files.py)
        return await BlobResponse(path, etag, f.size, headers=headers,
                                  write_timeout=write_timeout).open()

    if depot.store.backend != "local":
        from . import blob_serving

        return await blob_serving.respond(request, depot.store, f, etag, headers,
                                          from_local_file)
    return await from_local_file(depot.store.blob_path(f.sha256))


def setup(app: web.Application) -> None:
    client_compat.setup(app)
    app.router.add_get("/api/{kind:models|datasets}", list_handler)
    # Every method, so the handlers answer 405 with the exact Allow of each path.
    app.router.add_route("*", "/api/{kind:models|datasets}/{tail:.+}", api_handler)
    # Last: the most general route (``org/name/resolve/...`` and ``datasets/...``).
    app.router.add_route("*", "/{tail:.+}", resolve_handler)
