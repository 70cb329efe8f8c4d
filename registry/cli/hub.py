"""Upstream commands: search, info, pull (any Hub endpoint, another depot included)."""

from __future__ import annotations

import click

from ._common import emit_json, human_size, json_option, parse_spec_arg, pass_app, progress_bar, table


def endpoint_options(f):
    f = click.option("--token", help="Token for the endpoint, sent to it only "
                                     "[env: MODELDEPOT_TOKEN or HF_TOKEN].")(f)
    f = click.option("--endpoint", metavar="URL",
                     help="Hub to talk to [env: MODELDEPOT_ENDPOINT; default: https://huggingface.co]; "
                          "another 'modeldepot serve' works too.")(f)
    return f


def type_option(f):
    return click.option("--type", "repo_type", type=click.Choice(["model", "dataset"]),
                        default="model", show_default=True, help="Repository type.")(f)


def _target(app, endpoint: str | None, token: str | None) -> tuple[str, str | None]:
    return (endpoint or app.settings.endpoint).rstrip("/"), token or app.settings.token


@click.command("search")
@click.option("--search", "-s", "text", help="Text the repo id contains.")
@click.option("--task", help="Pipeline tag, e.g. text-classification (datasets: task category).")
@click.option("--author", help="Namespace (user or organisation).")
@click.option("--library", help="Library, e.g. transformers, sentence-transformers.")
@click.option("--tag", "tags", multiple=True, help="Tag the repo must have (repeatable).")
@click.option("--sort", type=click.Choice(["downloads", "likes", "lastModified", "createdAt"]),
              help="Sort, most first.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="At most this many results.")
@type_option
@endpoint_options
@json_option
@pass_app
def search_cmd(app, text, task, author, library, tags, sort, limit, repo_type, endpoint, token,
               as_json):
    """Search a Hub for models (or datasets) with the filters of the website."""
    from ..hub import search

    endpoint, token = _target(app, endpoint, token)
    rows = search(endpoint=endpoint, token=token, repo_type=repo_type, search=text, author=author,
                  task=task, library=library, tags=tags, sort=sort, limit=limit,
                  offline=app.settings.offline)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no {repo_type}s on {endpoint} match")
        return
    if repo_type == "model":
        click.echo(table(
            [(r["id"], r["pipeline_tag"] or "-", r["library_name"] or "-", _count(r["downloads"]),
              _count(r["likes"]), (r["last_modified"] or "")[:10] or "-") for r in rows],
            ["REPO", "TASK", "LIBRARY", "DOWNLOADS", "LIKES", "UPDATED"],
        ))
    else:
        click.echo(table(
            [(r["id"], _count(r["downloads"]), _count(r["likes"]),
              (r["last_modified"] or "")[:10] or "-") for r in rows],
            ["DATASET", "DOWNLOADS", "LIKES", "UPDATED"],
        ))


def _count(n) -> str:
    return "-" if n is None else f"{n:,}"


@click.command("info")
@click.argument("spec", metavar="REPO[@REV]")
@type_option
@endpoint_options
@json_option
@pass_app
def info_cmd(app, spec, repo_type, endpoint, token, as_json):
    """Show a repo on a Hub: metadata, refs and files with sizes and hashes."""
    from ..hub import info

    s = parse_spec_arg(spec)
    endpoint, token = _target(app, endpoint, token)
    data = info(s.name, s.revision, endpoint=endpoint, token=token, repo_type=repo_type,
                offline=app.settings.offline)
    if as_json:
        emit_json(data)
        return
    click.echo(f"{repo_type} {data['id']}@{data['revision']} -> {data['sha']}  ({endpoint})")
    for key, label in [("pipeline_tag", "task"), ("library_name", "library"),
                       ("license", "license"), ("author", "author")]:
        if data.get(key):
            click.echo(f"  {label}: {data[key]}")
    if data["gated"]:
        click.echo(f"  gated: {data['gated']}")
    click.echo(f"  downloads: {_count(data['downloads'])}  likes: {_count(data['likes'])}")
    if data["last_modified"]:
        click.echo(f"  last modified: {data['last_modified']}")
    if data["tags"]:
        click.echo(f"  tags: {', '.join(data['tags'])}")
    if data["refs"]:
        for group in ("branches", "tags"):
            if data["refs"][group]:
                click.echo(f"  {group}: " + ", ".join(
                    f"{n} ({c[:12]})" for n, c in sorted(data["refs"][group].items())))
    files = data["files"]
    click.echo(f"\nfiles ({len(files)}, {human_size(data['size'])}):")
    click.echo(table(
        [(f["path"], human_size(f["size"]), {True: "lfs", False: "", None: "?"}[f["lfs"]],
          f["sha256"] if f["lfs"] else (f["git_sha1"] or "unknown (will be computed on pull)"))
         for f in files],
        ["PATH", "SIZE", "LFS", "SHA256 (LFS) / GIT SHA1"],
    ))


class _PullBar:
    """One bar for the whole pull: bytes, with files done as its postfix."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None
        self.total_files = 0
        self.files = 0

    def start(self, total_bytes: int, total_files: int) -> None:
        self.bar = progress_bar(total_bytes, self.desc)
        self.total_files = total_files
        self._postfix()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def file_done(self, _path: str) -> None:
        self.files += 1
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.files}/{self.total_files} files", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("pull")
@click.argument("spec", metavar="REPO[@REV]")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching this pattern (repeatable), e.g. '*.json'.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Skip files matching this pattern (repeatable), e.g. '*.bin'.")
@type_option
@endpoint_options
@json_option
@pass_app
def pull_cmd(app, spec, include, exclude, repo_type, endpoint, token, as_json):
    """Mirror a repo revision from a Hub into the depot, verifying every file.

    The revision (default main) is resolved to a commit first and every file is fetched by
    that commit. Content the depot already holds is not downloaded again; an interrupted pull
    resumes when run again.
    """
    from ..hub import pull

    s = parse_spec_arg(spec)
    endpoint, token = _target(app, endpoint, token)
    bar = _PullBar(f"pulling {s}")
    try:
        result = pull(app.depot, repo_type, s.name, s.revision, endpoint=endpoint, token=token,
                      include=list(include) or None, exclude=list(exclude) or None, progress=bar)
    finally:
        bar.close()
    if result.unverified:
        click.echo(f"warning: {endpoint} gave no hash to check {len(result.unverified)} file(s) "
                   f"against; their hashes were computed on arrival and are recorded as "
                   f"'computed': {', '.join(result.unverified)}", err=True)
    if as_json:
        emit_json(result.to_json())
        return
    label = result.repo if repo_type == "model" else f"datasets/{result.repo}"
    if result.downloaded_files:
        fetched = (f"downloaded {result.downloaded_files} file(s), "
                   f"{human_size(result.downloaded_bytes)}")
    else:
        fetched = "nothing downloaded"
    if result.reused_files:
        fetched += f"; {result.reused_files} already in the depot"
    refs = f"; refs: {', '.join(result.refs)}" if result.refs else ""
    click.echo(f"pulled {label}@{result.commit[:12]} from {endpoint} ({result.file_count} files, "
               f"{human_size(result.size)}; {fetched}){refs}")
    if result.former_name:
        click.echo(f"{endpoint} redirected {result.former_name} to {result.repo}; "
                   f"{result.former_name} is recorded as a former name of it")


def register(group: click.Group) -> None:
    for command in (search_cmd, info_cmd, pull_cmd):
        group.add_command(command)
