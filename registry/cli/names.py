"""Former / legacy repo ids: names add, rm, list (registry/names.py)."""

from __future__ import annotations

import click

from ._common import emit_json, json_option, pass_app, repo_type_option, table


@click.group("names")
def names_group():
    """Former and legacy ids that still reach a repo (gpt2 -> openai-community/gpt2).

    A name is answered by 'serve' as the Hub answers a renamed repo (a redirect to the current
    id) and appears in the HF-cache view, so from_pretrained("gpt2") works online and offline.
    'pull' records one by itself when the upstream redirects the id it was given.
    """


@names_group.command("add")
@click.argument("repo")
@click.argument("former")
@repo_type_option
@json_option
@pass_app
def names_add(app, repo, former, repo_type, as_json):
    """Let FORMER (an old or legacy id) reach REPO."""
    from ..names import add_repo_name

    result = add_repo_name(app.depot, repo_type, repo, former, source="manual")
    if as_json:
        emit_json(result)
    elif result["created"]:
        click.echo(f"{former} -> {result['repo']}")
    else:
        click.echo(f"{former} -> {result['repo']} (already)")


@names_group.command("rm")
@click.argument("former")
@repo_type_option
@json_option
@pass_app
def names_rm(app, former, repo_type, as_json):
    """Stop answering FORMER (the repo itself stays)."""
    from ..names import remove_repo_name

    result = remove_repo_name(app.depot, repo_type, former)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"removed the name {former} of {result['repo']}")


@names_group.command("list")
@click.argument("repo", required=False)
@click.option("--type", "repo_type", type=click.Choice(["model", "dataset"]),
              help="Only this type.")
@json_option
@pass_app
def names_list(app, repo, repo_type, as_json):
    """List former names (of REPO, or of every repo)."""
    from ..names import list_repo_names

    rows = list_repo_names(app.depot, repo_type, repo)
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo("no former names; add one with 'modeldepot names add REPO FORMER'")
    else:
        click.echo(table([(r["name"], r["repo"] if r["type"] == "model" else f"datasets/{r['repo']}",
                           r["source"]) for r in rows], ["NAME", "REPO", "SOURCE"]))


def register(group: click.Group) -> None:
    group.add_command(names_group)
