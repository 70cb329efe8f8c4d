"""``GET /openapi.json`` and ``GET /docs``: one spec for every route family the app serves.

Each family contributes its paths (``hub_openapi.paths()``, ``inference_api.openapi_spec()``);
this module merges them and renders the page (self-contained: an air-gapped browser cannot
fetch Swagger UI).
"""

from __future__ import annotations

import html
import json

from aiohttp import web

from .app import OPTIONS

ERROR_SCHEMA = {"type": "object", "required": ["error", "error_type"], "properties": {
    "error": {"type": "string", "description": "What went wrong and what to do next."},
    "error_type": {"type": "string", "example": "InvalidInput"}}}
OPS_PATHS = {
    "/health": {"get": {"summary": "Liveness.", "responses": {"200": {
        "description": '{"status": "ok"}', "content": {"application/json": {"schema": {
            "type": "object", "required": ["status"]}}}}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics: requests, latency histogram, batch "
                         "sizes, queue depths, loaded models.",
                         "responses": {"200": {"description": "Prometheus text format.",
                                               "content": {"text/plain": {"schema": {
                                                   "type": "string"}}}}}}},
}


def spec(app: web.Application) -> dict:
    options = app[OPTIONS]
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "modeldepot API", "version": "1",
                 "description": "The depot's Hub-compatible API (for unmodified Hugging Face "
                 "clients) and its inference API, answered offline from mirrored artifacts."},
        "paths": dict(OPS_PATHS),
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
    if options.hub_api:
        from .hub_openapi import paths

        doc["paths"].update(paths())
    if options.inference:
        from .inference_api import MAX_INPUTS, openapi_spec

        # request sizes the spec allows follow the server's real queue limit
        inference = openapi_spec(max_inputs=min(MAX_INPUTS, options.max_queue))
        doc["paths"].update({k: v for k, v in inference["paths"].items() if k not in OPS_PATHS})
        doc["components"]["schemas"].update(inference.get("components", {}).get("schemas", {}))
    return doc


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(spec(request.app))


async def docs_handler(request: web.Request) -> web.Response:
    doc = spec(request.app)
    parts = [f"<h1>{html.escape(doc['info']['title'])}</h1>",
             f"<p>{html.escape(doc['info']['description'])}</p>",
             '<p>Machine-readable: <a href="openapi.json">openapi.json</a></p>']
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(op['summary'])}</p>")
            schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                      .get("schema", {}))
            if "example" in schema:
                parts.append("<p>Example body:</p><pre>"
                             + html.escape(json.dumps(schema["example"], indent=2)) + "</pre>")
            rows = "".join(f"<tr><td>{code}</td><td>{html.escape(r['description'])}</td></tr>"
                           for code, r in op["responses"].items())
            parts.append(f"<table><tr><th>status</th><th>meaning</th></tr>{rows}</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>modeldepot API"
            "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "pre{background:#f4f4f4;padding:1em}td,th{text-align:left;padding:.2em 1em}</style>"
            "</head><body>" + "".join(parts) + "</body></html>")
    return web.Response(text=page, content_type="text/html")


def setup(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_handler)
    app.router.add_get("/docs", docs_handler)
