"""`modeldepot lock` and `modeldepot sync`: pin exact revisions, and make a depot hold them."""

from __future__ import annotations

import sys

import click

from ._common import emit_json, json_option, pass_app, progress_bar, repo_type_option


@click.command("lock")
@click.argument("specs", nargs=-1, required=True, metavar="REPO[@REV|ALIAS]...")
@click.option("-o", "--output", default="modeldepot.lock", show_default=True, metavar="FILE",
              help="Where to write the lockfile ('-': stdout).")
@repo_type_option
@json_option
@pass_app
def lock_cmd(app, specs, output, repo_type, as_json):
    """Write a lockfile pinning each REPO (its main revision), REPO@REV or REPO@ALIAS.

    It records the repo, the commit, the refs pointing at it, every file's path, size and
    sha256, and for derived (ONNX) revisions the parent and recipe. Check a depot against it
    with 'modeldepot verify --lock FILE'; fill one with 'modeldepot sync FILE'.
    """
    from ..lockfile import build_lock, dump_lock, write_lock

    lock = build_lock(app.depot, specs, repo_type)
    if output == "-":
        click.echo(dump_lock(lock), nl=False)
        return
    path = write_lock(lock, output)
    if as_json:
        emit_json({"path": str(path), "entries": [
            {"type": e["type"], "repo": e["repo"], "commit": e["commit"], "files": len(e["files"])}
            for e in lock["entries"]]})
        return
    files = sum(len(e["files"]) for e in lock["entries"])
    click.echo(f"locked {len(lock['entries'])} revision(s), {files} file(s) in {path}")


@click.command("sync")
@click.argument("lockfile", default="modeldepot.lock", metavar="[LOCKFILE]")
@click.option("--endpoint", metavar="URL",
              help="Upstream to pull missing revisions from [env: MODELDEPOT_ENDPOINT].")
@click.option("--offline", is_flag=True,
              help="Pull nothing: list what is missing (exit 1 if anything is) [env: MODELDEPOT_OFFLINE].")
@json_option
@pass_app
def sync_cmd(app, lockfile, endpoint, offline, as_json):
    """Make the depot hold every revision LOCKFILE pins (default: modeldepot.lock).

    Missing revisions are pulled by commit from the upstream; with --offline (or
    MODELDEPOT_OFFLINE=1) they are only listed. Derived (ONNX) revisions come only from an
    upstream that is another depot's 'serve' (their recipe is taken from the lockfile);
    otherwise carry them in a bundle. Registry aliases in the lockfile are pointed at the locked
    commits. Exits 1 unless the depot then holds exactly the locked files.
    """
    from ..lockfile import check_synced, describe_row, read_lock, sync

    lock = read_lock(lockfile)
    settings = app.settings
    with progress_bar(0, "pulling") as bar:
        result = sync(app.depot, lock, endpoint=(endpoint or settings.endpoint).rstrip("/"),
                      token=settings.token, offline=offline or settings.offline,
                      progress=bar.update)
    if as_json:
        emit_json(result)
        if not result["ok"]:
            sys.exit(1)
        return
    for row in result["entries"]:
        click.echo(describe_row(row))
    check_synced(result)
    click.echo(f"all {len(result['entries'])} locked revision(s) present"
               + (f" ({result['pulled']} pulled)" if result["pulled"] else ""))


def register(group: click.Group) -> None:
    group.add_command(lock_cmd)
    group.add_command(sync_cmd)
