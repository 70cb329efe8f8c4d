"""`modeldepot serve`: the Hub-compatible endpoint and the inference API in one process."""

from __future__ import annotations

import click

from ..server.options import HttpOptions
from ._common import pass_app
from .access import auth_options, serve_auth_options

DEFAULTS = HttpOptions()


def http_options(f):
    """Timeouts, connection limits, the access log and allowed Host headers (HttpOptions)."""
    seconds = click.FloatRange(min=0.1)
    for option in reversed([
        click.option("--header-timeout", default=DEFAULTS.header_timeout,
                     show_default=True, type=seconds,
                     help="Seconds a client may take to send a request's headers."),
        click.option("--body-timeout", default=DEFAULTS.body_timeout,
                     show_default=True, type=seconds,
                     help="Seconds a request body may stall."),
        click.option("--idle-timeout", default=DEFAULTS.idle_timeout,
                     show_default=True, type=seconds,
                     help="Seconds a kept-alive connection may wait for its next request."),
        click.option("--write-timeout", default=DEFAULTS.write_timeout,
                     show_default=True, type=seconds,
                     help="Seconds a response may make no progress (the client stopped reading)."),
        click.option("--max-connections", type=click.IntRange(min=1),
                     help="Open connections in all [default: from the open-file limit, "
                     "at most 8192]; beyond it, 503."),
        click.option("--max-connections-per-client",
                     default=DEFAULTS.max_connections_per_client, show_default=True,
                     type=click.IntRange(min=0), help="Open connections per client address "
                     "(0: no limit); beyond it, 503."),
        click.option("--access-log", metavar="PATH|-",
                     help="Write a JSON line per request to PATH (- for stdout)."),
        click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="HOST",
                     help="A Host header to use in absolute links (repeatable); others get "
                     "the address the client connected to. --public-url overrides both."),
    ]):
        f = option(f)
    return f


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one).")
@click.option("--public-url", help="Base URL clients reach this server at (for Link headers).")
@click.option("--no-hub-api", is_flag=True, help="Serve only the inference API.")
@click.option("--no-inference", is_flag=True, help="Serve only the Hub API.")
@click.option("--no-ui", is_flag=True, help="Do not serve the web page under /ui/.")
@click.option("--models", "preload", multiple=True, metavar="REPO[@REV]|NAME=DIR",
              help="Load these models at start-up (repeatable); NAME=DIR serves a local "
              "directory (not registered) as NAME.")
@click.option("--only-registered", is_flag=True,
              help="Serve only repos recorded in the registry: refuse NAME=DIR directories.")
@click.option("--memory-budget-mb", type=click.IntRange(min=1),
              help="Unload least recently used models beyond this much memory.")
@click.option("--max-batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most inputs one model forward pass takes.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="How long the oldest waiting input may wait for a batch to fill.")
@click.option("--max-batch-tokens", default=16384, show_default=True,
              type=click.IntRange(min=1), help="Token budget of one forward pass (padded).")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=1),
              help="Inputs that may wait per model; beyond it requests get 429.")
@click.option("--proxy", "proxy_url", is_flag=False, flag_value="", default=None, metavar="[URL]",
              help="Pull-through cache: fetch what the depot lacks from URL (default: the "
              "endpoint, MODELDEPOT_ENDPOINT), verify, store and serve it. Env: MODELDEPOT_PROXY.")
@click.option("--proxy-token", help="The token the proxy uses upstream (clients' tokens are "
              "never forwarded). Env: MODELDEPOT_PROXY_TOKEN, else the depot's token.")
@click.option("--proxy-ttl", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Re-resolve a branch or tag upstream at most this often [default: 300]. "
              "Env: MODELDEPOT_PROXY_TTL.")
@click.option("--proxy-allow", multiple=True, metavar="PATTERN",
              help="Only proxy repos matching (org/*, datasets/org/*); repeatable.")
@click.option("--proxy-deny", multiple=True, metavar="PATTERN",
              help="Never proxy repos matching; wins over --proxy-allow; repeatable.")
@serve_auth_options
@http_options
@pass_app
def serve_cmd(app, host, port, public_url, no_hub_api, no_inference, no_ui, preload,
              only_registered, memory_budget_mb, max_batch_size, max_wait_ms, max_batch_tokens,
              max_queue, proxy_url, proxy_token, proxy_ttl, proxy_allow, proxy_deny, **more):
    """Serve the depot: Hub API for HF clients (HF_ENDPOINT=http://HOST:PORT) and inference."""
    from ..server.run import serve
    from ..server.app import ServeOptions

    access_keys = ("auth_mode", "admin_contact", "token_rate_limit", "max_auth_failures",
                   "no_audit", "tls_cert", "tls_key")
    access = {k: more.pop(k) for k in access_keys}
    http = more
    auth, ssl_context = auth_options(host, **access)
    options = ServeOptions(
        hub_api=not no_hub_api, inference=not no_inference, ui=not no_ui, preload=list(preload),
        only_registered=only_registered, memory_budget_mb=memory_budget_mb,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, public_url=public_url,
        max_batch_tokens=max_batch_tokens, max_queue=max_queue, auth=auth,
        http=HttpOptions(**{**http, "allowed_hosts": list(http["allowed_hosts"])}),
    )
    settings = app.settings.with_(**{k: v for k, v in {
        "proxy": proxy_url, "proxy_token": proxy_token, "proxy_ttl": proxy_ttl}.items()
        if v is not None})
    if settings.proxy_upstream is not None:
        from ..proxy import ProxyConfig

        options.proxy = ProxyConfig(
            upstream=settings.proxy_upstream, token=settings.proxy_token or settings.token,
            ttl=settings.proxy_ttl, allow=tuple(proxy_allow), deny=tuple(proxy_deny))
    serve(settings, options, host=host, port=port, ssl_context=ssl_context)


def register(group: click.Group) -> None:
    group.add_command(serve_cmd)
