"""Registry commands: import, list, show, tag, untag, rm, gc, du, verify, env, log, db."""

from __future__ import annotations

import shlex
import sys

import click

from ._common import (
    dry_run_option,
    emit_json,
    human_size,
    json_option,
    parse_spec_arg,
    pass_app,
    progress_bar,
    repo_type_option,
    table,
)
from .access import access_log_options, show_access_log


@click.command("import")
@click.argument("directory", type=click.Path())
@click.option("--repo", "repo_name", required=True, help="Repo id to register it as (org/name).")
@click.option("--ref", default="main", show_default=True, help="Branch name to point at it.")
@click.option("--private", is_flag=True, help="Make the repo private (see 'modeldepot access').")
@repo_type_option
@json_option
@pass_app
def import_cmd(app, directory, repo_name, ref, private, repo_type, as_json):
    """Register a local model (or dataset) DIRECTORY as a revision.

    The commit id is derived from the content: importing the same bytes twice gives the same id
    and changes nothing.
    """
    from ..importer import import_dir, scan_dir

    total = 0
    try:
        from pathlib import Path

        if Path(directory).is_dir():
            total = sum(p.stat().st_size for _, p in scan_dir(Path(directory)))
    except Exception:
        total = 0
    with progress_bar(total, f"importing {repo_name}") as bar:
        result = import_dir(
            app.depot, directory, repo_name, ref=ref, repo_type=repo_type,
            progress=bar.update,
        )
    if private:
        from ..auth.visibility import set_visibility

        set_visibility(app.depot, repo_type, repo_name, "private")
    if as_json:
        emit_json(result.to_json())
        return
    what = "imported" if result.created else "already present, nothing changed:"
    click.echo(
        f"{what} {repo_name}@{result.commit[:12]} ({result.file_count} files, "
        f"{human_size(result.size)}); {ref} -> {result.commit}"
    )


@click.command("list")
@click.option("--search", "-s", help="Text the repo id contains.")
@click.option("--task", help="Pipeline tag, e.g. text-classification.")
@click.option("--author", help="Namespace (the part before the '/').")
@click.option("--library", help="Library name, e.g. transformers.")
@click.option("--type", "repo_type", type=click.Choice(["model", "dataset"]), help="Only this type.")
@click.option("--sort", type=click.Choice(["name", "size", "date", "downloads"]), default="name",
              show_default=True)
@click.option("--limit", type=click.IntRange(min=0), help="At most this many rows.")
@json_option
@pass_app
def list_cmd(app, search, task, author, library, repo_type, sort, limit, as_json):
    """List the repos in the depot."""
    rows = app.depot.list_repos(repo_type=repo_type, search=search, task=task, author=author,
                                library=library, sort=sort, limit=limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no repos match" if any([search, task, author, library, repo_type])
                   else "the depot is empty; add a model with 'modeldepot import' or 'modeldepot pull'")
        return
    rows_out = [[r["name"] if r["type"] == "model" else f"datasets/{r['name']}", r["task"] or "-",
                 r["library"] or "-",
                 f"{r['revisions']} ({r['partial_revisions']} partial)" if r["partial_revisions"]
                 else r["revisions"], human_size(r["size"]),
                 (r["updated_at"] or "")[:10]] for r in rows]
    headers = ["REPO", "TASK", "LIBRARY", "REVS", "SIZE", "UPDATED"]
    if sort == "downloads":
        # upstream's count at the last pull, and the downloads this depot's server answered
        for out, r in zip(rows_out, rows):
            out[4:4] = ["-" if r["downloads"] is None else f"{r['downloads']:,}",
                        f"{r['served_downloads']:,}"]
        headers[4:4] = ["DOWNLOADS", "SERVED"]
    click.echo(table(rows_out, headers))


@click.command("show")
@click.argument("spec", metavar="REPO[@REV]")
@repo_type_option
@json_option
@pass_app
def show_cmd(app, spec, repo_type, as_json):
    """Show a repo's revisions, refs, lineage and the files of one revision."""
    s = parse_spec_arg(spec)
    info = app.depot.show(repo_type, s.name, s.revision)
    from ..export import int8_warning

    warning = int8_warning(info["revision"]["recipe"])
    if as_json:
        emit_json({**info, "revision": {**info["revision"], "warning": warning}})
        return
    repo, rev = info["repo"], info["revision"]
    click.echo(f"{repo['type']} {repo['name']}")
    for key, label in [("pipeline_tag", "task"), ("library_name", "library"),
                       ("license", "license"), ("source", "source")]:
        if repo.get(key):
            click.echo(f"  {label}: {repo[key]}")
    if rev["meta"].get("parameter_count"):
        click.echo(f"  parameters: {rev['meta']['parameter_count']:,}")
    from ..names import list_repo_names

    former = [n["name"] for n in list_repo_names(app.depot, repo_type, s.name)]
    if former:
        click.echo(f"  former names: {', '.join(former)}")
    click.echo(f"  disk use: {human_size(info['disk_use'])}")
    click.echo("\nrevisions:")
    click.echo(table(
        [(r["commit"][:12], r["source"], ",".join(r["refs"]) or "-",
          f"{r['files']}/{r['listed_files']} partial" if r["partial"] else r["files"],
          human_size(r["size"]), (r["parent_commit"] or "")[:12] or "-", r["created_at"][:19])
         for r in info["revisions"]],
        ["COMMIT", "SOURCE", "REFS", "FILES", "SIZE", "PARENT", "CREATED"],
    ))
    click.echo(f"\nfiles of {rev['commit']}"
               + (f" (refs: {', '.join(r['name'] for r in rev['refs'])})" if rev["refs"] else ""))
    from ..finetune import lineage_lines

    trained = lineage_lines(rev["recipe"])
    for line in trained:
        click.echo(f"  {line}")
    if rev["lineage"] and not trained:
        click.echo(f"  derived from: {' <- '.join(c[:12] for c in rev['lineage'])}")
    if rev["derived"]:
        click.echo(f"  derived revisions: {', '.join(c[:12] for c in rev['derived'])}")
    if rev["recipe"]:
        r = rev["recipe"]
        click.echo("  recipe: " + ", ".join(f"{k}={r[k]}" for k in sorted(r) if not isinstance(r[k], (dict, list))))
        if warning:
            click.echo(f"  warning: {warning}")
    if rev["partial"]:
        click.echo(f"  partial: {len(rev['files'])} of {len(rev['files']) + len(rev['missing_files'])}"
                   f" files present; 'modeldepot pull {repo['name']}@{rev['commit'][:12]}"
                   + ("' --type dataset" if repo["type"] == "dataset" else "'")
                   + " fetches the rest")
    # "computed": upstream gave no hash to check against, so the sha256 is of what arrived
    click.echo(table(
        [(f["path"], human_size(f["size"]), "lfs" if f["lfs"] else "", f["sha256"],
          f["verification"]) for f in rev["files"]]
        + [(f["path"], human_size(f["size"]), "lfs" if f["lfs"] else "", f["sha256"] or "-",
            "not fetched") for f in rev["missing_files"]],
        ["PATH", "SIZE", "LFS", "SHA256", "CHECK"],
    ))


@click.command("tag")
@click.argument("spec", metavar="REPO[@REV]")
@click.argument("alias")
@repo_type_option
@json_option
@pass_app
def tag_cmd(app, spec, alias, repo_type, as_json):
    """Point registry alias ALIAS (e.g. prod) at a revision; clients can use it as a revision."""
    s = parse_spec_arg(spec)
    result = app.depot.tag(repo_type, s.name, s.revision, alias)
    if as_json:
        emit_json(result)
    else:
        moved = f" (was {result['previous'][:12]})" if result["previous"] else ""
        click.echo(f"{s.name}: {alias} -> {result['commit']}{moved}")


@click.command("untag")
@click.argument("repo")
@click.argument("alias")
@repo_type_option
@json_option
@pass_app
def untag_cmd(app, repo, alias, repo_type, as_json):
    """Remove registry alias ALIAS from REPO (the revision stays)."""
    s = parse_spec_arg(repo)
    result = app.depot.untag(repo_type, s.name, alias)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{s.name}: removed alias {alias} (was {result['commit'][:12]})")


@click.command("rm")
@click.argument("spec", metavar="REPO[@REV]")
@repo_type_option
@dry_run_option
@json_option
@pass_app
def rm_cmd(app, spec, repo_type, dry_run, as_json):
    """Remove a revision, or a whole repo; blobs still used elsewhere stay."""
    s = parse_spec_arg(spec)
    plan = app.depot.rm(repo_type, s.name, s.revision, dry_run=dry_run)
    if as_json:
        emit_json(plan)
        return
    verb = "would remove" if dry_run else "removed"
    what = "repo" if plan["repo_removed"] else "revision"
    click.echo(
        f"{verb} {what} {s.name}: {len(plan['revisions'])} revision(s), "
        f"refs {', '.join(plan['refs']) or '-'}; frees {plan['blobs_freed']} blob(s), "
        f"{human_size(plan['bytes_freed'])}"
    )


@click.command("gc")
@dry_run_option
@json_option
@pass_app
def gc_cmd(app, dry_run, as_json):
    """Remove unreferenced blobs, stale temp files and stray cache entries."""
    result = app.depot.gc(dry_run=dry_run)
    if as_json:
        emit_json(result)
        return
    verb = "would free" if dry_run else "freed"
    click.echo(f"{verb} {human_size(result['bytes_freed'])}: {result['blobs']} blob(s), "
               f"{result['temp_files']} temp file(s), {result['stray_views']} stray cache entr(ies)")


@click.command("du")
@json_option
@pass_app
def du_cmd(app, as_json):
    """Disk use: stored bytes, bytes saved by deduplication, per repo."""
    result = app.depot.du()
    if as_json:
        emit_json(result)
        return
    click.echo(table(
        [(r["repo"], human_size(r["size"]), human_size(r["unique"])) for r in result["repos"]],
        ["REPO", "SIZE", "UNIQUE"],
    ))
    click.echo(f"\nstored {human_size(result['stored'])} for {human_size(result['logical'])} of "
               f"files (dedup saves {human_size(result['saved_by_dedup'])}); "
               f"temp {human_size(result['temp'])}")


@click.command("verify")
@click.argument("spec", metavar="[REPO[@REV]]", required=False)
@click.option("--lock", "lockfile", metavar="FILE",
              help="Prove the depot holds every file this lockfile pins (re-hashes those).")
@repo_type_option
@json_option
@pass_app
def verify_cmd(app, spec, lockfile, repo_type, as_json):
    """Re-hash stored files offline against the registry. Exits 1 if anything is wrong."""
    if lockfile and spec:
        raise click.UsageError("give REPO[@REV] or --lock FILE, not both")
    s = parse_spec_arg(spec) if spec else None
    expected = None
    if lockfile:
        from ..lockfile import expected_files, read_lock

        expected = expected_files(read_lock(lockfile))
    result = app.depot.verify(repo_type if s else None, s.name if s else None,
                              s.revision if s else None, expected=expected)
    if as_json:
        emit_json(result)
    else:
        for p in result["problems"]:
            click.echo(f"{p['problem'].upper()}: {p['repo']}@{p['commit'][:12]} {p['path']}"
                       + (f" (sha256 {p['sha256'][:16]}…)" if p.get("sha256") else ""))
        status = "ok" if result["ok"] else f"{len(result['problems'])} problem(s)"
        click.echo(f"verified {result['blobs']} blob(s), {human_size(result['bytes'])}: {status}")
    if not result["ok"]:
        sys.exit(1)


@click.command("env")
@click.option("--server", metavar="URL",
              help="Point clients at a running 'modeldepot serve' instead of the local cache.")
@json_option
@pass_app
def env_cmd(app, server, as_json):
    """Print the shell lines that point Hugging Face clients at this depot.

    Use with: eval "$(modeldepot env)"
    """
    if server:
        values = {
            "HF_ENDPOINT": server.rstrip("/"),
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            # the hf CLI otherwise asks the package index whether it is up to date
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "DISABLE_SAFETENSORS_CONVERSION": "1",
            # datasets otherwise reports each load to a hard-coded S3 host
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        }
        from ..auth.tokens import well_formed

        if app.settings.token and well_formed(app.settings.token):
            # HF_TOKEN is a depot token (docs/sharing.md): clients must send it
            del values["HF_HUB_DISABLE_IMPLICIT_TOKEN"]
    else:
        cache = str(app.settings.hub_cache)
        values = {
            "HF_HUB_CACHE": cache,
            # optimum reads the legacy variable, not HF_HUB_CACHE
            "HUGGINGFACE_HUB_CACHE": cache,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            # load_dataset("org/name") offline reads only its own cache: 'dataset prepare' fills it
            "HF_DATASETS_CACHE": str(app.settings.datasets_cache),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "DISABLE_SAFETENSORS_CONVERSION": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        }
    if as_json:
        emit_json(values)
    else:
        for k, v in values.items():
            click.echo(f"export {k}={shlex.quote(v)}")


@click.command("log")
@click.argument("repo", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@access_log_options
@click.pass_context
@pass_app
def log_cmd(app, ctx, repo, limit, as_json, access, access_repo, access_token, since):
    """Show the audit log (newest first), or with --access the access audit."""
    if access:
        # --json exports everything unless --limit is given
        explicit = ctx.get_parameter_source("limit") != click.core.ParameterSource.DEFAULT
        return show_access_log(app, access_repo or repo, access_token, since,
                               limit if explicit or not as_json else None, as_json)
    if access_repo or access_token or since:
        raise click.UsageError("--repo, --token and --since go with --access")
    events = app.depot.events(repo=repo, limit=limit)
    if as_json:
        emit_json(events)
        return
    click.echo(table(
        [(e["at"][:19], e["actor"], e["action"], e["repo"] or "-", (e["commit"] or "")[:12] or "-")
         for e in events],
        ["AT", "ACTOR", "ACTION", "REPO", "COMMIT"],
    ))


@click.command("inventory")
@pass_app
def inventory_cmd(app):
    """Print what this depot holds as JSON (for 'bundle create --have')."""
    emit_json(app.depot.inventory())


@click.group("db")
def db_group():
    """Registry database administration."""


@db_group.command("upgrade")
@pass_app
def db_upgrade(app):
    """Upgrade the registry schema to this version's head (done automatically on first use)."""
    from ..db import Database, schema_status

    db = Database(app.settings, migrate=False)
    before = schema_status(db.engine)["current"]
    db.ensure_schema()
    after = schema_status(db.engine)["current"]
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db_group.command("status")
@json_option
@pass_app
def db_status(app, as_json):
    """Show the schema revision of the registry database."""
    from ..db import Database, schema_status

    db = Database(app.settings, migrate=False)
    status = schema_status(db.engine)
    status["url"] = db.engine.url.render_as_string(hide_password=True)
    if as_json:
        emit_json(status)
        return
    state = ("newer than this modeldepot (refused)" if status["newer_than_code"]
             else "up to date" if status["up_to_date"] else "needs upgrade")
    click.echo(f"database: {status['url']}\nschema: {status['current'] or 'empty'} "
               f"(head {status['head']}): {state}")


@db_group.command("copy")
@click.option("--to", "to_url", required=True, metavar="URL",
              help="the target registry, e.g. postgresql+psycopg://user@host/db or sqlite:////path")
@click.option("--to-blobs", "to_blobs", metavar="s3://BUCKET/PREFIX|local",
              help="the target blob store [default: this depot's own]; AWS_* variables give the "
              "S3 endpoint and credentials")
@json_option
@pass_app
def db_copy(app, to_url, to_blobs, as_json):
    """Copy this depot's registry (and blobs) to another database (and blob store), verified;
    re-run to resume."""
    from ..dbcopy import copy_depot
    from ..depot import Depot

    target = app.settings.with_(db_url=to_url)
    if to_blobs is not None:
        if to_blobs != "local" and not to_blobs.startswith("s3://"):
            raise click.UsageError("--to-blobs takes s3://BUCKET/PREFIX or local")
        target = target.with_(blob_url=None if to_blobs == "local" else to_blobs)
    report = copy_depot(app.depot, Depot(target))
    if as_json:
        emit_json(report.to_json())
        return
    rows = sum(report.rows.values())
    click.echo(f"copied {sum(report.copied.values())} row(s) and {report.blobs_copied} blob(s) "
               f"to {report.target}; verified: {rows} row(s) in {len(report.rows)} tables and the "
               "inventory equal on both sides")


def register(group: click.Group) -> None:
    for cmd in (import_cmd, list_cmd, show_cmd, tag_cmd, untag_cmd, rm_cmd, gc_cmd, du_cmd,
                verify_cmd, env_cmd, log_cmd, inventory_cmd, db_group):
        group.add_command(cmd)
