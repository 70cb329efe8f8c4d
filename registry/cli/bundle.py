"""`modeldepot bundle create|inspect|import`: carry revisions across an air gap."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import emit_json, human_size, json_option, pass_app, progress_bar, repo_type_option, table


@click.group("bundle")
def bundle_group():
    """Carry revisions across an air gap in verified bundles (tar files).

    On the connected side: 'modeldepot bundle create OUT REPO...'; carry OUT (or its volumes)
    across; on the inside: 'modeldepot bundle import OUT'. For an incremental bundle, first run
    'modeldepot inventory > have.json' inside and pass it with --have.
    """


def _names(paths: list[str]) -> str:
    if len(paths) <= 2:
        return ", ".join(paths)
    return f"{len(paths)} volumes {paths[0]} … {paths[-1]}"


def _bar(desc: str):
    """A progress bar whose total is set once the library knows it."""
    bar = progress_bar(0, desc)

    def start(total):
        bar.total = total
        bar.refresh()

    return bar, start


@bundle_group.command("create")
@click.argument("out", metavar="OUT")
@click.argument("specs", nargs=-1, metavar="[REPO[@REV]]...")
@click.option("--all", "all_revisions", is_flag=True, help="Bundle every revision in the depot.")
@click.option("--have", type=click.Path(dir_okay=False), metavar="HAVE.json",
              help="The receiving depot's 'modeldepot inventory': leave out the blobs it holds.")
@click.option("--split", metavar="SIZE",
              help="Write numbered volumes OUT.000, OUT.001, ... of at most SIZE (e.g. 4G, 700M).")
@repo_type_option
@json_option
@pass_app
def bundle_create(app, out, specs, all_revisions, have, split, repo_type, as_json):
    """Write REPO (every revision) or REPO@REV (that one) to the bundle OUT ('-': stdout).

    The bundle holds a manifest (repos, revisions, refs, files with sizes and hashes, recipes
    and lineage of derived ONNX revisions) and each needed blob once. Derived revisions bring
    the revisions they were made from.
    """
    from ..bundle import create_bundle, load_inventory
    from ..units import parse_size

    have_blobs = load_inventory(have) if have else None
    volume = parse_size(split) if split else None
    bar, start = _bar("bundling")
    with bar:
        target = click.get_binary_stream("stdout") if out == "-" else out
        result = create_bundle(app.depot, target, specs,
                               all_revisions=all_revisions, repo_type=repo_type, have=have_blobs,
                               split=volume, progress=bar.update, on_start=start)
    to_stderr = out == "-"
    if as_json:
        click.echo(__import__("json").dumps(result, indent=2), err=to_stderr)
        return
    where = _names(result["paths"]) if result["paths"] else "stdout"
    left = (f"; left out {result['left_out_blobs']} blob(s) ({human_size(result['left_out_bytes'])}) "
            "the receiver holds" if result["left_out_blobs"] else "")
    click.echo(f"wrote {where}: {len(result['revisions'])} revision(s) of {result['repos']} repo(s), "
               f"{result['blobs']} blob(s), {human_size(result['archive_size'])}{left}", err=to_stderr)


@bundle_group.command("inspect")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@json_option
@pass_app
def bundle_inspect(app, files, as_json):
    """Show what a bundle holds and what this depot lacks of it (reads the manifest only).

    FILE... is one bundle: a single file, '-' for stdin, or all its volumes (OUT.000 alone
    finds the others).
    """
    from ..bundle import inspect_bundle

    stream = click.get_binary_stream("stdin") if files == ("-",) else None
    info = inspect_bundle(app.depot, None if stream else list(files), stream)
    if as_json:
        emit_json(info)
        return
    label = _names(info["files"]) if info["files"] else "stdin"
    click.echo(f"{label}: {info['format']}, created {info['created_at']} by depot "
               f"{info['source_depot_id'][:12]}")
    volumes = f" in {len(info['files'])} volumes" if info["volume_size"] else ""
    left = info["left_out"]
    incremental = (f"; incremental: left out {left['blobs']} blob(s) ({human_size(left['bytes'])})"
                   if left["blobs"] else "")
    click.echo(f"{human_size(info['archive_size'])}{volumes}: {info['blobs']} blob(s), "
               f"{human_size(info['blob_bytes'])}{incremental}")
    click.echo(table(
        [(r["repo"] if r["type"] == "model" else f"datasets/{r['repo']}", r["commit"][:12],
          ",".join(r["refs"]) or "-", r["files"], human_size(r["size"]), r["kind"] or "-",
          "present" if r["present"] else "missing") for r in info["revisions"]],
        ["REPO", "COMMIT", "REFS", "FILES", "SIZE", "KIND", "HERE"],
    ))
    lacks = info["lacks"]
    if lacks["revisions"]:
        click.echo(f"this depot lacks {lacks['revisions']} revision(s); importing writes "
                   f"{lacks['blobs']} blob(s), {human_size(lacks['bytes'])}")
    else:
        click.echo("this depot holds every revision in the bundle")
    if lacks["unavailable"]:
        first = lacks["unavailable"][0]
        click.echo(f"cannot import here: {len(lacks['unavailable'])} file(s) need blobs that neither "
                   f"the bundle nor this depot holds (e.g. {first['path']} of {first['repo']}); it "
                   "was made with --have for another depot")


@bundle_group.command("import")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--move-refs", is_flag=True,
              help="Let the bundle move refs this depot has (main, aliases) to its commits and "
                   "replace repo fields this depot has set; without it such a bundle is refused.")
@json_option
@pass_app
def bundle_import(app, files, move_refs, as_json):
    """Verify and register the revisions in a bundle.

    Every blob's size and sha256 are checked before it is stored, and revisions become visible
    only once all their blobs are in; a damaged or hostile bundle is refused and changes
    nothing. Importing the same bundle again changes nothing. FILE... is one bundle: a file,
    '-' for stdin, or all its volumes (OUT.000 alone finds the others).
    """
    from ..bundle import import_bundle

    stream = click.get_binary_stream("stdin") if files == ("-",) else None
    bar, start = _bar("importing")
    with bar:
        result = import_bundle(app.depot, None if stream else list(files), stream,
                               progress=bar.update, on_start=start, move_refs=move_refs)
    if as_json:
        emit_json(result)
        return
    label = _names([Path(p).name for p in result["files"]]) if result["files"] else "stdin"
    for n in result["former_names"]:
        click.echo(f"former name {n['name']} -> {n['repo'] if n['type'] == 'model' else 'datasets/' + n['repo']}")
    if not result["changed"]:
        click.echo(f"already present, nothing changed: {result['present']} revision(s) from {label}")
        return
    for r in result["revisions"]:
        name = r["repo"] if r["type"] == "model" else f"datasets/{r['repo']}"
        refs = f" (refs: {', '.join(r['refs'])})" if r["refs"] else ""
        click.echo(f"{'imported' if r['created'] else 'present '} {name}@{r['commit'][:12]}{refs}")
    for m in result["moved_refs"]:
        click.echo(f"moved    {m['repo']} {m['ref']}: {m['from'][:12]} -> {m['to'][:12]}")
    for k in result["kept_fields"]:
        click.echo(f"kept     {k['repo']}'s own {', '.join(k['fields'])} (the bundle's differ; "
                   "--move-refs takes them)")
    click.echo(f"{result['created']} revision(s) imported from {label}, {result['present']} already "
               f"present; {result['blobs_written']} blob(s) written "
               f"({human_size(result['bytes_written'])}), {result['blobs_held']} already held")


def register(group: click.Group) -> None:
    group.add_command(bundle_group)
