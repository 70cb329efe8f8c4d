"""Running the app: bind, print where it listens, serve until interrupted."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from ..config import Settings
from .app import ServeOptions, create_app
from .limits import GuardedRunner, default_max_connections, raise_open_file_limit
from .logs import AccessLogWriter, access_log_class, configure_error_log


def serve(settings: Settings, options: ServeOptions, host: str = "127.0.0.1", port: int = 8080,
          ssl_context=None) -> None:
    configure_error_log()
    nofile = raise_open_file_limit()
    http = options.http
    max_connections = http.max_connections or default_max_connections(nofile)
    app = create_app(settings, options)
    access = AccessLogWriter(http.access_log) if http.access_log else None

    async def main() -> None:
        # aiohttp calls an access logger only when given a logger too; ours writes JSON lines.
        log_args = ({"access_log_class": access_log_class(access), "access_log": web.access_logger}
                    if access is not None else {"access_log": None})
        runner = GuardedRunner(app, http, max_connections, **log_args)
        await runner.setup()
        if ssl_context is not None:
            from .tls import TLSSite

            site = TLSSite(runner, host, port, ssl_context)
        else:
            site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1] if site._server else port  # port 0
        scheme = "https" if ssl_context is not None else "http"
        print(f"modeldepot serving {settings.home} on {scheme}://{host}:{bound} (open-file limit "
              f"{nofile}, at most {max_connections} connections)", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        if access is not None:
            access.close()
