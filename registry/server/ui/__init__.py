"""The depot's web page, served by ``modeldepot serve`` under ``/ui/``.

Server-rendered (Jinja2, autoescaped) on top of the same library calls the CLI makes
(``Depot.list_repos``, ``Depot.show``, ``dataset_info``/``head``, ``Depot.events``), so a page
and the command show the same thing. Browsing needs no JavaScript; one small script, shipped in
the package like every other asset, draws the "try it" answers. Every page carries a
Content-Security-Policy that allows nothing but the depot itself: no CDN, no inline script, no
request to another host.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from ... import dataset as datasets
from ...errors import DepotError, InvalidInput
from ...inference.tasks import ALIASES, TASKS
from ...units import human_size
from ..app import DEPOT, OPTIONS
from . import render

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PAGE_SIZE = 50
MAX_HEAD_ROWS = 100
SORTS = {"name": "name", "size": "size", "updated": "date", "downloads": "downloads"}
KINDS = {"models": "model", "datasets": "dataset"}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
                ".png": "image/png"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

JINJA = web.AppKey("ui_jinja", jinja2.Environment)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["size"] = lambda n: human_size(n or 0)
    env.filters["short"] = lambda c: (c or "")[:10]
    env.filters["q"] = lambda s: quote(str(s), safe="/@")
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    return env


def _page(request: web.Request, template: str, status: int = 200, **context) -> web.Response:
    context.setdefault("viewer", viewer(request))
    body = request.app[JINJA].get_template(template).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


def viewer(request: web.Request) -> str | None:
    """The name of who is looking (a token's name when access control is on), for the header."""
    from ..auth_mw import PRINCIPAL

    principal = request.get(PRINCIPAL)
    return getattr(principal, "name", None) if principal is not None else None


def refusal_page(request: web.Request, e: DepotError) -> web.Response:
    """Access control's refusal of a page, as a page: sign in when no (valid) token was sent."""
    if e.http_status == 401 and getattr(e, "hub_code", None) != "GatedRepo":
        target = request.path_qs if request.method == "GET" else "/ui/"
        raise web.HTTPSeeOther("/ui/login?" + urlencode({"next": target}),
                               headers=SECURITY_HEADERS)
    return _error_page(request, e)


def _base_url(request: web.Request) -> str:
    public = request.app[OPTIONS].public_url
    return (public or f"{request.scheme}://{request.host}").rstrip("/")


async def _call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def _error_page(request: web.Request, e: DepotError) -> web.Response:
    status = e.http_status if 400 <= e.http_status < 500 else 500
    return _page(request, "error.html", status=status, title="Not found" if status == 404
                 else "Error", message=e.message)


# -- the list of repos ------------------------------------------------------------------------


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"{name} must be a whole number from {lo} to {hi}")
    return min(max(int(raw), lo), hi)


async def list_page(request: web.Request) -> web.Response:
    q = request.query
    filters = {k: q.get(k, "").strip()[:200] for k in ("q", "type", "task", "library", "author")}
    sort = q.get("sort", "name")
    try:
        if sort not in SORTS:
            raise InvalidInput(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
        if filters["type"] not in ("", "model", "dataset"):
            raise InvalidInput("type must be model or dataset")
        page = _int_param(request, "page", 1, 1, 10**6)
        from ...auth.visibility import listing_filter
        from ..auth_mw import viewer_of

        rows = await _call(
            request.app[DEPOT].list_repos, visible=listing_filter(viewer_of(request)),
            repo_type=filters["type"] or None,
            search=filters["q"] or None, task=filters["task"] or None,
            author=filters["author"] or None, library=filters["library"] or None,
            sort=SORTS[sort], limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    except DepotError as e:
        return _page(request, "list.html", status=422, rows=[], filters=filters, sort=sort,
                     page=1, more=False, error=e.message, tasks=TASKS, sorts=SORTS,
                     link=lambda **kw: "")
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]

    def link(**changes) -> str:
        params = {**filters, "sort": sort, "page": page, **changes}
        return "/ui/?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

    return _page(request, "list.html", rows=rows, filters=filters, sort=sort, page=page,
                 more=more, error=None, tasks=TASKS, sorts=SORTS, link=link)


# -- one repo ---------------------------------------------------------------------------------


def _forced(recipe: dict | None) -> bool:
    validation = (recipe or {}).get("validation") or {}
    return any(isinstance(v, dict) and v.get("forced") for v in validation.values())


def _read_card(depot, repo_type: str, name: str, commit: str, files: list[dict]) -> str | None:
    if not any(f["path"] == "README.md" for f in files):
        return None
    sha = next(f["sha256"] for f in files if f["path"] == "README.md")
    try:
        path = depot.store.local_blob(sha)  # the card alone, not the whole view
        with open(path, "rb") as f:
            return f.read(render.MAX_CARD_CHARS * 4).decode("utf-8", "replace")
    except (OSError, DepotError):
        return None


def _repo_data(depot, repo_type: str, name: str, rev: str | None) -> dict:
    data = depot.show(repo_type, name, rev)
    current = data["revision"]
    recipes = {}
    if any(r.get("kind") for r in data["revisions"]):
        # show() carries the recipe of the shown revision only; the picture needs each one's
        for r in data["revisions"]:
            if r.get("kind"):
                recipes[r["commit"]] = depot.show(repo_type, name, r["commit"])["revision"]["recipe"]
    recipes[current["commit"]] = current["recipe"]
    for r in data["revisions"]:
        recipe = recipes.get(r["commit"])
        r["forced"] = _forced(recipe)
        r["inputs"] = render.recipe_inputs(recipe)
    data["card"] = _read_card(depot, repo_type, name, current["commit"], current["files"])
    data["logical"] = sum(r["size"] or 0 for r in data["revisions"])
    return data


async def repo_page(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    repo_type = KINDS[kind]
    name = request.match_info["name"]
    rev = request.query.get("rev") or None
    depot = request.app[DEPOT]
    try:
        # access control (when on) has already refused a repo this viewer may not read
        data = await _call(_repo_data, depot, repo_type, name, rev)
    except DepotError as e:
        return _error_page(request, e)
    current = data["revision"]
    base = _base_url(request)
    prefix = "" if repo_type == "model" else "datasets/"
    resolve_base = f"/{prefix}{quote(name, safe='/')}/resolve/{current['commit']}/"
    card_html = render.render_card(data["card"], resolve_base) if data["card"] else None
    page_link = lambda commit: f"/ui/{kind}/{quote(name, safe='/')}?rev={commit}"  # noqa: E731
    svg = None
    if any(r["parent_commit"] or r["inputs"] for r in data["revisions"]):
        svg = render.lineage_svg(data["revisions"], current["commit"], page_link)
    refs = sorted({(ref, r["commit"]) for r in data["revisions"] for ref in r["refs"]})
    task = data["repo"]["pipeline_tag"] or (current["recipe"] or {}).get("task")
    task = ALIASES.get(task, task)
    can_try = (repo_type == "model" and request.app[OPTIONS].inference and task in TASKS)
    shown_rev = rev or "main"
    preview = None
    if repo_type == "dataset":
        preview = await _dataset_preview(request, depot, name, current["commit"])
    # Formatted once here rather than through filters per cell: a 1,000-file revision is the
    # slowest page, and this halves its render time.
    file_rows = [(f["path"], resolve_base + quote(f["path"], safe="/"), human_size(f["size"]),
                  f["sha256"], "yes" if f["lfs"] else "", f["verification"])
                 for f in current["files"]]
    return _page(
        request, "repo.html", kind=kind, file_rows=file_rows, repo_type=repo_type, name=name, data=data,
        current=current, refs=refs, card_html=card_html, lineage=svg, page_link=page_link,
        base=base, prefix=prefix, rev=shown_rev, task=task, can_try=can_try,
        forced=_forced(current["recipe"]), preview=preview, resolve_base=resolve_base,
        recipe_inputs=render.recipe_inputs(current["recipe"]),
    )


async def _dataset_preview(request: web.Request, depot, name: str, commit: str) -> dict:
    q = request.query
    form = {"config": q.get("config", "")[:200], "split": q.get("split", "")[:200],
            "where": q.get("where", "")[:2000]}
    out: dict = {"form": form, "info": None, "head": None, "error": None}
    try:
        n = _int_param(request, "n", 20, 0, MAX_HEAD_ROWS)
        form["n"] = n
        out["info"] = await _call(datasets.dataset_info, depot, name, commit)
        out["head"] = await _call(datasets.head, depot, name, commit,
                                  config=form["config"] or None, split=form["split"] or None,
                                  where=form["where"] or None, limit=n)
    except DepotError as e:
        out["error"] = e.message
    form.setdefault("n", 20)
    return out


# -- operations -------------------------------------------------------------------------------


def _ops_data(depot, repo: str | None, action: str | None) -> dict:
    events = depot.events(repo=repo, limit=500 if action else 100)
    if action:
        events = [e for e in events if e["action"] == action][:100]
    verify = depot.last_verify()
    return {"events": events, "disk": depot.largest_repos(limit=25), "verify": verify,
            "du": depot.disk_totals()}


async def ops_page(request: web.Request) -> web.Response:
    repo = request.query.get("repo", "").strip()[:200] or None
    action = request.query.get("kind", "").strip()[:64] or None
    depot = request.app[DEPOT]
    data = await _call(_ops_data, depot, repo, action)
    access = None
    audit = request.app.get(ACCESS_AUDIT)
    if audit is not None:
        token = request.query.get("token", "").strip()[:200] or None
        access = await _call(audit, repo=repo, token=token, limit=100)
    loaded = []
    from ..inference_api import INFERENCE

    service = request.app.get(INFERENCE)
    if service is not None:
        for m in service.cache.loaded():
            loaded.append({"label": m.label, "task": m.task, "backend": m.backend,
                           "bytes": m.size_bytes})
    return _page(request, "ops.html", data=data, loaded=loaded, access=access,
                 filters={"repo": repo or "", "kind": action or "",
                          "token": request.query.get("token", "")[:200]})


# The access audit (registry/auth) plugs in here: f(repo=, token=, limit=) -> [dict].
ACCESS_AUDIT = web.AppKey("ui_access_audit", object)


# -- signing in (when access control is on) ---------------------------------------------------

# The token travels in this cookie (HttpOnly, SameSite=Strict), never in a URL: a URL ends up in
# logs, history and Referer headers. The access-control middleware reads it like a Bearer token.
COOKIE = "modeldepot_token"


async def login_page(request: web.Request) -> web.Response:
    return _page(request, "login.html", error=None, next=_safe_next(request.query.get("next")))


def _safe_next(target: str | None) -> str:
    # Only a path of this site: an absolute URL here would make the form an open redirect.
    if not target or not target.startswith("/ui/") or target.startswith("//") or "\\" in target:
        return "/ui/"
    return target


async def login_submit(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise web.HTTPUnsupportedMediaType(text="send the sign-in form")
    form = await request.post()
    token = str(form.get("token", "")).strip()
    target = _safe_next(str(form.get("next", "")))
    check = request.app.get(TOKEN_CHECK)
    if check is None:  # access control is off: there is nothing to sign in to
        raise web.HTTPSeeOther(target)
    name = check(request, token) if token else None
    if name is None:
        return _page(request, "login.html", status=401, next=target,
                     error="that token is not valid (unknown, revoked or expired)")
    response = web.HTTPSeeOther(target)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/",
                        secure=request.secure, max_age=12 * 3600)
    response.headers.update(SECURITY_HEADERS)
    raise response


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/ui/")
    response.del_cookie(COOKIE, path="/")
    raise response


# Access control (registry/server/auth_mw) plugs in here: f(request, secret) -> token name, or
# None if not valid.
TOKEN_CHECK = web.AppKey("ui_token_check", object)


# -- assets -----------------------------------------------------------------------------------


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})


async def to_ui(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


def setup(app: web.Application) -> None:
    app[JINJA] = _env()
    app.router.add_get("/", to_ui)
    app.router.add_get("/ui", to_ui)
    app.router.add_get("/ui/", list_page)
    app.router.add_get("/ui/ops", ops_page)
    app.router.add_get("/ui/login", login_page)
    app.router.add_post("/ui/login", login_submit)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/static/{name}", static_file)
    app.router.add_get("/ui/{kind:models|datasets}/{name:.+}", repo_page)


__all__ = ["setup", "ACCESS_AUDIT", "TOKEN_CHECK", "COOKIE", "refusal_page"]
