"""What the pages show that is not plain data: a model card rendered safely, and the lineage
picture of derived revisions.

Cards come from whoever published the repo, so they are hostile input. Two layers, each enough
on its own: markdown-it renders with raw HTML turned off (a ``<script>`` in a card is text), then
nh3 (the Ammonia sanitizer) keeps only an allow-list of tags and attributes and only http(s) and
mailto links. Images are kept only when they point inside the repo (rewritten to its resolve
URL): an ``<img src="https://...">`` would make the browser fetch from another host, and the
depot's pages must never do that.
"""

from __future__ import annotations

import html
from urllib.parse import quote, urlsplit

import nh3
from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable(
    "strikethrough")

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table",
    "tbody", "td", "th", "thead", "tr", "ul",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"},
                      "th": {"align"}, "td": {"align"}}
URL_SCHEMES = {"http", "https", "mailto"}
MAX_CARD_CHARS = 200_000


def strip_front_matter(text: str) -> str:
    """The YAML block at the top of a card is metadata, shown elsewhere on the page."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


def render_card(text: str, resolve_base: str) -> str:
    """Markdown -> HTML that is safe to put in the page as it is.

    ``resolve_base`` is the repo's resolve URL for the shown commit, ending in ``/``; relative
    image paths become files of that commit.
    """

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src":
            parts = urlsplit(value)
            if parts.scheme or parts.netloc or value.startswith(("/", "\\")) or ".." in value:
                return None  # another host, or a path outside the repo: never fetched
            return resolve_base + quote(value.lstrip("./"), safe="/")
        return value

    rendered = _md.render(strip_front_matter(text[:MAX_CARD_CHARS]))
    return nh3.clean(rendered, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                     url_schemes=URL_SCHEMES, attribute_filter=attribute_filter,
                     link_rel="noopener noreferrer nofollow")


# -- lineage ----------------------------------------------------------------------------------


def recipe_inputs(recipe: dict | None) -> list[dict]:
    """The other repos a derived revision was made from (base model, dataset), by commit.

    Recipes name them in a few shapes (``{"base": {"repo", "commit"}}``,
    ``{"dataset": {"repo", "commit", "split"}}`` or flat ``base_repo``/``base_commit``); the
    ones found are returned as ``{"role", "repo", "commit", "type", "split"}``.
    """
    found = []
    for role, repo_type in (("base", "model"), ("dataset", "dataset")):
        entry = (recipe or {}).get(role)
        if isinstance(entry, dict) and entry.get("repo") and entry.get("commit"):
            found.append({"role": role, "repo": entry["repo"], "commit": entry["commit"],
                          "type": entry.get("type", repo_type), "split": entry.get("split")})
        elif (recipe or {}).get(f"{role}_repo") and (recipe or {}).get(f"{role}_commit"):
            found.append({"role": role, "repo": recipe[f"{role}_repo"],
                          "commit": recipe[f"{role}_commit"], "type": repo_type,
                          "split": recipe.get(f"{role}_split")})
    return found


def lineage_svg(revisions: list[dict], current: str, link) -> str:
    """An SVG of the repo's revisions as a tree (parent -> derived), one column per generation.

    ``revisions``: [{commit, parent_commit, kind, refs, forced, inputs}] where ``inputs`` are
    external parents (recipe_inputs). ``link(commit)`` gives the page URL of a revision.
    Everything in it is escaped text; no script, no external reference.
    """
    by_commit = {r["commit"]: r for r in revisions}

    def depth(r, seen=()):
        p = r.get("parent_commit")
        if p and p in by_commit and p not in seen:
            return 1 + depth(by_commit[p], seen + (r["commit"],))
        return 1 if r.get("inputs") else 0

    columns: dict[int, list[dict]] = {}
    for r in revisions:
        columns.setdefault(depth(r), []).append(r)
    externals = [i for r in revisions for i in r.get("inputs", [])]
    if externals:
        columns.setdefault(0, [])
    w, h, gap_x, gap_y = 190, 46, 60, 16
    pos: dict[str, tuple[int, int]] = {}
    ext_pos: dict[tuple[str, str], tuple[int, int]] = {}
    parts = []
    rows = 0
    for col in sorted(columns):
        items = columns[col]
        y = 10
        if col == 0:
            for e in externals:
                key = (e["repo"], e["commit"])
                if key not in ext_pos:
                    ext_pos[key] = (10, y)
                    y += h + gap_y
        for r in items:
            pos[r["commit"]] = (10 + col * (w + gap_x), y)
            y += h + gap_y
        rows = max(rows, y)
    width = 20 + (max(columns) + 1 if columns else 1) * (w + gap_x)
    height = max(rows, h + 20)

    def edge(a, b, cls):
        (x1, y1), (x2, y2) = a, b
        parts.append(f'<path class="{cls}" d="M{x1 + w},{y1 + h // 2} C{x1 + w + gap_x // 2},'
                     f'{y1 + h // 2} {x2 - gap_x // 2},{y2 + h // 2} {x2},{y2 + h // 2}"/>')

    for r in revisions:
        p = r.get("parent_commit")
        if p in pos:
            edge(pos[p], pos[r["commit"]], "edge")
        for e in r.get("inputs", []):
            edge(ext_pos[(e["repo"], e["commit"])], pos[r["commit"]], "edge input")

    def box(x, y, title, sub, cls, href=None):
        t = html.escape(title[:30])
        s = html.escape(sub[:34])
        inner = (f'<rect class="{cls}" x="{x}" y="{y}" width="{w}" height="{h}" rx="6"/>'
                 f'<text x="{x + 8}" y="{y + 19}" class="t">{t}</text>'
                 f'<text x="{x + 8}" y="{y + 36}" class="s">{s}</text>')
        if href:
            inner = f'<a href="{html.escape(href)}">{inner}</a>'
        parts.append(inner)

    for (repo, commit), (x, y) in ext_pos.items():
        role = next(e["role"] for e in externals if (e["repo"], e["commit"]) == (repo, commit))
        box(x, y, repo, f"{role} @ {commit[:10]}", "node external")
    for r in revisions:
        x, y = pos[r["commit"]]
        kind = r.get("kind") or r.get("source") or "revision"
        refs = ", ".join(r.get("refs") or [])
        cls = "node current" if r["commit"] == current else "node"
        if r.get("forced"):
            cls += " forced"
            kind += " (forced, below floor)"
        box(x, y, f"{r['commit'][:10]} {refs}".strip(), kind, cls, link(r["commit"]))
    return (f'<svg class="lineage" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="lineage of derived revisions">{"".join(parts)}</svg>')
