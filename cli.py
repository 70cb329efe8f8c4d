"""modeldepot's command line: parse, call ``registry``, format. No business logic here."""

from __future__ import annotations

import os
import sys

import click

from registry import __version__
from registry.cli import register_all
from registry.cli._common import App, flush_stdout, quiet_exit_on_broken_pipe, stdout_gone
from registry.config import Settings
from registry.errors import DepotError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug() -> bool:
    return os.environ.get("MODELDEPOT_DEBUG", "").upper() in {"1", "TRUE", "YES", "ON"}


class DepotGroup(click.Group):
    """Turns domain errors into one ``Error: ...`` line and a non-zero exit, never a traceback
    (``MODELDEPOT_DEBUG=1`` shows it)."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            flush_stdout()  # here, so a reader that went away is noticed, not at exit
            return result
        except DepotError as e:
            if _debug():
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            flush_stdout()
            raise
        except OSError as e:
            if isinstance(e, BrokenPipeError) and stdout_gone():  # `modeldepot list | head`
                quiet_exit_on_broken_pipe()
            if _debug():
                raise
            raise click.ClickException(f"{e.strerror or e} ({e.filename or type(e).__name__})") from None
        except Exception as e:  # a bug, not bad input: still one line, with the way to see more
            if _debug():
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e} (set MODELDEPOT_DEBUG=1 for the traceback)"
            ) from None


@click.group(cls=DepotGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="modeldepot")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Depot directory [env: MODELDEPOT_HOME; default: the user data dir].",
)
@click.option(
    "--db-url",
    help="Registry database URL [env: MODELDEPOT_DB_URL; default: SQLite in the home].",
)
@click.pass_context
def main(ctx: click.Context, home: str | None, db_url: str | None) -> None:
    """modeldepot: an offline mirror and registry for Hugging Face models and datasets.

    Pull or import exact revisions into a local depot, export them to ONNX, serve them to
    unmodified Hugging Face clients, answer inference requests, and carry them across an air gap.
    """
    ctx.obj = App(Settings.from_env(home=home, db_url=db_url))


register_all(main)


if __name__ == "__main__":
    main()
