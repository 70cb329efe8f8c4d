"""The app factory. Each route family lives in its own module with a ``setup(app)`` function."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ..config import Settings
from ..depot import Depot
from .options import HttpOptions

SETTINGS = web.AppKey("settings", Settings)
DEPOT = web.AppKey("depot", Depot)
OPTIONS = web.AppKey("options", object)


@dataclass
class ServeOptions:
    """What `modeldepot serve` was asked for; each route family reads its own part."""

    hub_api: bool = True
    inference: bool = True
    ui: bool = True
    # inference options (see registry/server/inference_api.py)
    preload: list[str] = field(default_factory=list)
    only_registered: bool = False
    memory_budget_mb: int | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_batch_tokens: int = 16384
    # the base URL clients use, for absolute Link headers; None: see http.public_base
    public_url: str | None = None
    # access control and the access audit (registry.auth.AuthOptions); None: neither
    auth: object | None = None
    # `--proxy`: a pull-through cache in front of this upstream (registry/proxy.ProxyConfig)
    proxy: object | None = None
    # timeouts, connection limits, access log, allowed Host headers (registry/server/http.py)
    http: HttpOptions = field(default_factory=HttpOptions)


def create_app(settings: Settings, options: ServeOptions | None = None) -> web.Application:
    options = options or ServeOptions()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[SETTINGS] = settings
    app[DEPOT] = Depot(settings)
    app[OPTIONS] = options
    from . import http, openapi, ops

    ops.setup(app)  # middlewares, outermost first: see registry/server/http.py
    http.setup(app)
    openapi.setup(app)
    if options.auth is not None:
        from . import auth_mw

        auth_mw.setup(app, options.auth)
    if options.inference:
        from . import inference_api

        inference_api.setup(app)
    if options.hub_api and options.proxy is not None:
        from . import proxy

        proxy.setup(app, options.proxy)
    if options.ui:
        from . import ui

        ui.setup(app)
    if options.hub_api:
        # Last: its /{repo}/resolve/... routes are the most general.
        from . import hub_api

        hub_api.setup(app)
    return app
