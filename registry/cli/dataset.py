"""Dataset commands: ``dataset info``, ``head`` and ``prepare``, offline from the depot."""

from __future__ import annotations

import json

import click

from ..dataset import WHERE_HELP
from ._common import emit_json, human_size, json_option, parse_spec_arg, pass_app, table

# Long cells would make the table unreadable; --json gives the full values.
CELL_WIDTH = 60


@click.group("dataset")
def dataset_group():
    """Inspect mirrored datasets offline: features, splits, row counts, and rows."""


@dataset_group.command("info")
@click.argument("spec", metavar="REPO[@REV]")
@json_option
@pass_app
def dataset_info(app, spec, as_json):
    """Show a dataset's configs, splits (row counts, sizes), columns and types, and card text.

    Splits and configs are found as 'datasets.load_dataset' finds them (the card's configs,
    the data/ layout, train/validation/test in file names).
    """
    from ..dataset import dataset_info as read_info

    s = parse_spec_arg(spec)
    info = read_info(app.depot, s.name, s.revision)
    if as_json:
        emit_json(info)
        return
    click.echo(f"dataset {info['repo']}@{info['commit'][:12]}  ({human_size(info['size'])})")
    if info["license"]:
        lic = info["license"]
        click.echo(f"  license: {lic if isinstance(lic, str) else ', '.join(lic)}")
    if info["description"]:
        click.echo(f"  {_summary(info['description'])}")
    if len(info["configs"]) > 1 and not any(c["default"] for c in info["configs"]):
        click.echo(f"  configs: {', '.join(c['name'] for c in info['configs'])} (none is the "
                   "default: name one with --config)")
    for cfg in info["configs"]:
        default = " (default)" if cfg["default"] and len(info["configs"]) > 1 else ""
        click.echo(f"\nconfig {cfg['name']}{default}: {cfg['format']}, {cfg['rows']:,} rows")
        click.echo(table(
            [(sp["name"], f"{sp['rows']:,}", human_size(sp["size"]), len(sp["files"]))
             for sp in cfg["splits"]],
            ["SPLIT", "ROWS", "SIZE", "FILES"],
        ))
        click.echo()
        click.echo(table([(c["name"], c["feature"] or c["type"]) for c in cfg["columns"]],
                         ["COLUMN", "FEATURE"]))


def _summary(text: str) -> str:
    """The first paragraph of the card that is not a heading."""
    for para in text.split("\n\n"):
        para = " ".join(line.strip() for line in para.splitlines() if line.strip())
        if para and not para.startswith("#"):
            return para[:200]
    return ""


def _columns(value: str | None) -> list[str] | None:
    if value is None:
        return None
    cols = [c.strip() for c in value.split(",") if c.strip()]
    if not cols:
        raise click.BadParameter("give column names separated by commas", param_hint="--columns")
    return cols


@dataset_group.command("head", epilog="\b\n--where EXPR:\n" + WHERE_HELP)
@click.argument("spec", metavar="REPO[@REV]")
@click.option("--split", help="Split to read [default: train, else the first split].")
@click.option("--config", "config_name", help="Config to read, for datasets with several.")
@click.option("--where", "where", metavar="EXPR",
              help="Keep only rows matching EXPR (see below).")
@click.option("--columns", metavar="A,B", help="Only these columns, in this order.")
@click.option("-n", "limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="Number of rows to show.")
@json_option
@pass_app
def dataset_head(app, spec, split, config_name, where, columns, limit, as_json):
    """Show the first rows of a split, optionally filtered; read offline from the depot."""
    from ..dataset import head

    s = parse_spec_arg(spec)
    result = head(app.depot, s.name, s.revision, config=config_name, split=split, where=where,
                  columns=_columns(columns), limit=limit)
    if as_json:
        emit_json(result)
        return
    if not result["rows"]:
        click.echo(f"no rows in {s.name} ({result['split']})"
                   + (f" match {where!r}" if where else ""))
        return
    click.echo(table([[_cell(row[c]) for c in result["columns"]] for row in result["rows"]],
                     result["columns"]))


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


@dataset_group.command("prepare")
@click.argument("spec", metavar="REPO[@REV]")
@json_option
@pass_app
def dataset_prepare(app, spec, as_json):
    """Build the datasets cache of a dataset, so load_dataset("org/name") works offline.

    Offline, datasets reads only HF_DATASETS_CACHE; 'modeldepot env' points it at the cache
    built here (<home>/datasets), from the depot's own files.
    """
    from ..datasets_cache import prepare_dataset

    s = parse_spec_arg(spec)
    result = prepare_dataset(app.depot, s.name, s.revision)
    if as_json:
        emit_json(result)
        return
    for c in result["configs"]:
        splits = ", ".join(f"{k} ({v:,} rows)" for k, v in c["splits"].items())
        click.echo(f"prepared datasets/{result['repo']}@{result['commit'][:12]} config "
                   f"{c['config']}: {splits}")


def register(group: click.Group) -> None:
    group.add_command(dataset_group)
