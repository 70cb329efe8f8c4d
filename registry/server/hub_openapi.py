"""The Hub API's routes in OpenAPI 3.1, as ``hub_api.py`` validates them.

Repo ids are two path parameters (``{namespace}/{name}``): OpenAPI path parameters cannot hold a
``/``. The schemas say what the handlers accept; anything else gets a 4xx JSON error.
"""

from __future__ import annotations

from .hub_api import EXPANDABLE, MAX_OFFSET, PAGE_SIZE, SORTS

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_ERROR = {"content": {"application/json": {"schema": ERROR}}}


def _error(text: str) -> dict:
    return {"description": text, **JSON_ERROR}


NOT_FOUND = _error("Unknown repo, revision or file (X-Error-Code: RepoNotFound, "
                   "RevisionNotFound or EntryNotFound).")
INVALID = _error("A query parameter out of range or unknown.")
FLAG = {"type": "string", "description": "1, true, yes or on; anything else is false."}


def _path(name: str, example: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}, "example": example}


def _query(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


REPO = [_path("namespace", "org", "The repo's owner (the part before the slash)."),
        _path("name", "name", "The repo's name.")]
REVISION = _path("revision", "main", "A branch, tag, alias (prod) or 40-hex commit.")
CURSOR = _query("cursor", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                "Where the page starts (from the Link header of the previous page).")
OBJECT = {"type": "object"}
ENTRY = {"type": "object", "required": ["type", "path"], "properties": {
    "type": {"enum": ["file", "directory"]}, "path": {"type": "string"},
    "oid": {"type": "string"}, "size": {"type": "integer"}, "lfs": OBJECT}}


def _ok(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list_op(kind: str) -> dict:
    params = [
        _query("search", {"type": "string"}, "Substring of the repo id."),
        _query("author", {"type": "string"}),
        _query("filter", {"type": "string"}, "A tag, library, pipeline tag or license:<id>."),
        _query("sort", {"enum": sorted(SORTS) + [""]}, "Empty: by id."),
        _query("direction", {"type": "string"}, "-1 for descending."),
        _query("limit", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
               f"At most {PAGE_SIZE} are returned."),
        CURSOR,
        _query("full", FLAG), _query("cardData", FLAG), _query("config", FLAG),
        _query("gated", FLAG),
        {**_query("expand", {"type": "array", "items": {"enum": sorted(EXPANDABLE)}}),
         "style": "form", "explode": True},
    ]
    if kind == "models":
        params.insert(3, _query("pipeline_tag", {"type": "string"}))
    return {"get": {
        "summary": f"List {kind} (huggingface_hub list_{kind}); the next page is in Link.",
        "parameters": params,
        "responses": {"200": _ok("One page of repos.", {"type": "array", "items": OBJECT}),
                      "422": INVALID}}}


def _repo_ops(kind: str) -> dict:
    base = f"/api/{kind}/{{namespace}}/{{name}}"
    info = {"description": "ModelInfo / DatasetInfo.", "content": {"application/json": {
        "schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}}}}
    blobs = _query("blobs", FLAG, "Sizes, blob ids and LFS data of the siblings.")
    expand = {**_query("expand", {"type": "array", "items": {"type": "string"}}),
              "style": "form", "explode": True}
    return {
        base: {"get": {"summary": f"Repo info ({kind[:-1]}_info).", "parameters": REPO + [
            blobs, expand], "responses": {"200": info, "404": NOT_FOUND}}},
        f"{base}/revision/{{revision}}": {"get": {
            "summary": "Repo info at a revision.", "parameters": REPO + [REVISION, blobs, expand],
            "responses": {"200": info, "404": NOT_FOUND}}},
        f"{base}/tree/{{revision}}": {"get": {
            "summary": "The files and folders of a revision (list_repo_tree).",
            "parameters": REPO + [REVISION, _query("recursive", FLAG),
                                  _query("expand", FLAG, "Add lastCommit to each entry."), CURSOR],
            "responses": {"200": _ok("Entries, 1000 a page.", {"type": "array", "items": ENTRY}),
                          "404": NOT_FOUND, "422": INVALID}}},
        f"{base}/refs": {"get": {
            "summary": "Branches and tags (list_repo_refs).",
            "parameters": REPO + [_query("include_prs", FLAG)],
            "responses": {"200": _ok("Refs.", {"type": "object", "required": ["branches", "tags"]}),
                          "404": NOT_FOUND}}},
        f"{base}/paths-info/{{revision}}": {"post": {
            "summary": "Entries for the given paths (get_paths_info).",
            "parameters": REPO + [REVISION],
            "requestBody": {"required": False, "content": {  # no body: no paths, []
                "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
                    # form fields: one path, or the field repeated
                    "paths": {"anyOf": [{"type": "string"},
                                        {"type": "array", "items": {"type": "string"}}]},
                    "expand": FLAG}}}}},
            "responses": {"200": _ok("Entries (unknown paths are left out).",
                                     {"type": "array", "items": ENTRY}),
                          "404": NOT_FOUND, "422": _error("A body that is not a form.")}}},
    }


def _resolve(prefix: str) -> dict:
    params = REPO + [REVISION, _path("filename", "config.json", "A file of that revision.")]
    headers = {"X-Repo-Commit": {"schema": {"type": "string"}},
               "X-Linked-Size": {"schema": {"type": "string"}}, "ETag": {"schema": {"type": "string"}}}
    ok = {"description": "The file. ETag: git blob sha1, or sha256 for LFS files (also in "
          "X-Linked-Etag). Conditionals (If-Match, If-None-Match, If-Range) use it.",
          "headers": headers, "content": {"application/octet-stream": {
              "schema": {"type": "string", "format": "binary"}}}}
    responses = {"200": ok, "206": {"description": "The requested byte range (Range: bytes=a-b)."},
                 "304": {"description": "If-None-Match matched the ETag."},
                 "404": NOT_FOUND,
                 "412": {"description": "If-Match did not match the ETag."},
                 "416": _error("Range not satisfiable (Content-Range: bytes */size)."),
                 "503": _error("Out of resources right now (Retry-After).")}
    op = {"summary": "Download a file (hf_hub_download); HEAD gives its metadata.",
          "parameters": params, "responses": responses}
    return {f"{prefix}/{{namespace}}/{{name}}/resolve/{{revision}}/{{filename}}": {
        "get": op, "head": {**op, "summary": "A file's metadata (get_hf_file_metadata)."}}}


def paths() -> dict:
    out: dict = {}
    for kind in ("models", "datasets"):
        out[f"/api/{kind}"] = _list_op(kind)
        out.update(_repo_ops(kind))
    out.update(_resolve(""))
    out.update(_resolve("/datasets"))
    return out
