"""Running the app: bind, print where it listens, serve until interrupted."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from ..config import Settings
from .app import ServeOptions, create_app


def serve(settings: Settings, options: ServeOptions, host: str = "127.0.0.1", port: int = 8080,
          ssl_context=None) -> None:
    app = create_app(settings, options)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        if ssl_context is not None:
            from .tls import TLSSite

            site = TLSSite(runner, host, port, ssl_context)
        else:
            site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1] if site._server else port  # port 0
        scheme = "https" if ssl_context is not None else "http"
        print(f"modeldepot serving {settings.home} on {scheme}://{host}:{bound}", file=sys.stderr,
              flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
