"""Operations routes: /health (and /metrics, added by the inference API's metrics registry)."""

from __future__ import annotations

from aiohttp import web


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
