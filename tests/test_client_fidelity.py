"""Client fidelity (issue 10, items 6-10): former/legacy repo ids, short commit ids in the
HF-cache view, datasets prepared for offline loading by id, what current clients call, and
download counts. The client flows themselves are in tests/test_clients_current.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests
from sqlalchemy import update

from serverutil import AppServer


def _app_server(depot):
    from registry.server.app import ServeOptions, create_app

    return AppServer(create_app(depot.settings, ServeOptions(inference=False)))


@pytest.fixture
def clf(depot, models):
    from registry.importer import import_dir

    return import_dir(depot, models.get("classifier"), "org/clf")


@pytest.fixture
def notes(depot, tmp_path):
    from registry.importer import import_dir

    src = tmp_path / "notes-src"
    src.mkdir()
    (src / "README.md").write_text("Two tiny splits.\n")
    (src / "train.csv").write_text("text,label\nhello,1\nbye,0\n")
    (src / "test.csv").write_text("text,label\nyo,1\n")
    return import_dir(depot, src, "org/notes", repo_type="dataset")


# -- item 6: former / legacy repo ids ------------------------------------------------------------


def test_names_cli_adds_lists_refuses_and_removes(cli, depot, clf, notes, models):
    r = cli("names", "add", "org/clf", "clf-legacy")
    assert (r.exit_code, r.output) == (0, "clf-legacy -> org/clf\n")
    r = cli("names", "add", "org/clf", "clf-legacy")
    assert (r.exit_code, r.output) == (0, "clf-legacy -> org/clf (already)\n")
    r = cli("names", "add", "org/notes", "notes-old", "--type", "dataset")
    assert (r.exit_code, r.output) == (0, "notes-old -> datasets/org/notes\n")
    r = cli("names", "list")
    assert r.output == ("NAME        REPO                SOURCE\n"
                        "----------  ------------------  ------\n"
                        "notes-old   datasets/org/notes  manual\n"
                        "clf-legacy  org/clf             manual\n")
    assert json.loads(cli("names", "list", "--json").output) == [
        {"name": "notes-old", "type": "dataset", "repo": "org/notes", "source": "manual"},
        {"name": "clf-legacy", "type": "model", "repo": "org/clf", "source": "manual"},
    ]
    assert "\n  former names: clf-legacy\n" in cli("show", "org/clf").output
    r = cli("names", "list", "org/clf")
    assert r.output == ("NAME        REPO     SOURCE\n"
                        "----------  -------  ------\n"
                        "clf-legacy  org/clf  manual\n")

    from registry.importer import import_dir

    import_dir(depot, models.get("classifier2"), "org/other")
    cases = [
        (("names", "add", "org/clf", "org/other"),
         "Error: org/other is a model repo of its own in the depot; remove it first "
         "('modeldepot rm org/other') to make it a name of org/clf\n"),
        (("names", "add", "org/other", "clf-legacy"),
         "Error: clf-legacy is already a name of org/clf; remove it first with "
         "'modeldepot names rm clf-legacy'\n"),
        (("names", "add", "org/clf", "org/clf"),
         "Error: 'org/clf' is the repo's own id, not a former name\n"),
        (("names", "add", "org/missing", "x"),
         "Error: model repo 'org/missing' is not in the depot; see 'modeldepot list'\n"),
        (("names", "add", "org/clf", "bad--name"),
         "Error: invalid repo id 'bad--name': use 'org/name' (letters, digits, '-', '_', '.'; "
         "no '--' or '..')\n"),
        (("names", "rm", "nobody"),
         "Error: nobody is not a former name of any model repo; see 'modeldepot names list'\n"),
        # a new repo may not take a name that leads to another one
        (("import", str(models.get("classifier2")), "--repo", "clf-legacy"),
         "Error: clf-legacy is a former name of org/clf; remove it first with "
         "'modeldepot names rm clf-legacy' to use it as a repo id of its own\n"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert (r.exit_code, r.output) == (1, message), args
    r = cli("names", "rm", "clf-legacy")
    assert (r.exit_code, r.output) == (0, "removed the name clf-legacy of org/clf\n")
    assert not (depot.store.hub / "models--clf-legacy").exists()
    assert cli("names", "list", "org/clf").output == (
        "no former names; add one with 'modeldepot names add REPO FORMER'\n")


def test_the_cache_view_links_a_former_name_and_gc_keeps_it(cli, depot, clf):
    depot.add_repo_name("model", "org/clf", "clf-legacy")
    link = depot.store.hub / "models--clf-legacy"
    assert os.readlink(link) == "models--org--clf"
    assert (link / "refs" / "main").read_text() == clf.commit
    assert (link / "snapshots" / clf.commit / "config.json").read_bytes() == (
        depot.store.hub / "models--org--clf" / "snapshots" / clf.commit / "config.json").read_bytes()
    r = cli("gc", "--json")
    assert json.loads(r.output)["stray_views"] == 0
    assert link.is_symlink()
    cli("rm", "org/clf")
    assert cli("names", "list", "--json").output.strip() == "[]"
    assert json.loads(cli("gc", "--json").output)["stray_views"] == 1  # the dangling link
    assert not os.path.lexists(link)


def test_serve_answers_a_former_name_as_the_hub_answers_a_renamed_repo(depot, clf, notes):
    depot.add_repo_name("model", "org/clf", "clf-legacy")
    depot.add_repo_name("model", "org/clf", "old-org/clf")
    depot.add_repo_name("dataset", "org/notes", "notes-old")
    with _app_server(depot) as server:
        url = server.url
        cases = {
            "/api/models/clf-legacy": "/api/models/org/clf",
            "/api/models/clf-legacy/revision/main?blobs=True": "/api/models/org/clf/revision/main?blobs=True",
            "/api/models/old-org/clf/tree/main?recursive=True": "/api/models/org/clf/tree/main?recursive=True",
            "/api/models/clf-legacy/refs": "/api/models/org/clf/refs",
            f"/clf-legacy/resolve/{clf.commit[:7]}/config.json": f"/org/clf/resolve/{clf.commit[:7]}/config.json",
            "/api/datasets/notes-old": "/api/datasets/org/notes",
            "/datasets/notes-old/resolve/main/train.csv": "/datasets/org/notes/resolve/main/train.csv",
        }
        for path, location in cases.items():
            r = requests.get(url + path, allow_redirects=False)
            assert (r.status_code, r.headers.get("Location")) == (307, location), path
        r = requests.head(url + "/clf-legacy/resolve/main/config.json", allow_redirects=False)
        assert (r.status_code, r.headers["Location"]) == (307, "/org/clf/resolve/main/config.json")
        r = requests.post(url + "/api/models/clf-legacy/paths-info/main", data={"paths": ["config.json"]})
        assert r.status_code == 200 and r.json()[0]["path"] == "config.json"
        info = requests.get(url + "/api/models/clf-legacy").json()
        assert (info["id"], info["sha"]) == ("org/clf", clf.commit)
        # a former name of a model is not one of a dataset, and unknown ids stay 404s
        r = requests.get(url + "/api/datasets/clf-legacy", allow_redirects=False)
        assert (r.status_code, r.headers["X-Error-Code"]) == (404, "RepoNotFound")
        r = requests.get(url + "/nobody/resolve/main/config.json", allow_redirects=False)
        assert (r.status_code, r.headers["X-Error-Code"]) == (404, "RepoNotFound")


@pytest.fixture
def upstream(tmp_path, models):
    """A second depot serving org/clf, as an upstream."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    up = Depot(Settings.from_env(home=tmp_path / "upstream"))
    result = import_dir(up, models.get("classifier"), "org/clf")
    with _app_server(up) as server:
        yield {"depot": up, "url": server.url, "commit": result.commit}


def test_pulling_a_redirected_id_records_the_repo_and_its_former_name(cli, depot, upstream):
    upstream["depot"].add_repo_name("model", "org/clf", "clf-legacy")
    r = cli("pull", "clf-legacy", "--endpoint", upstream["url"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith(f"pulled org/clf@{upstream['commit'][:12]} from {upstream['url']} ")
    assert lines[1] == (f"{upstream['url']} redirected clf-legacy to org/clf; clf-legacy is "
                        "recorded as a former name of it")
    assert json.loads(cli("names", "list", "--json").output) == [
        {"name": "clf-legacy", "type": "model", "repo": "org/clf", "source": "redirect"}]
    assert [r["name"] for r in depot.list_repos()] == ["org/clf"]
    assert os.readlink(depot.store.hub / "models--clf-legacy") == "models--org--clf"
    # pulling again by the old id changes nothing and says so again
    r = cli("pull", "clf-legacy", "--endpoint", upstream["url"], "--json")
    assert json.loads(r.output)["former_name"] == "clf-legacy"


# -- item 7: short commit ids --------------------------------------------------------------------


def test_pull_at_a_short_id_keeps_a_cache_ref_but_no_branch(cli, depot, upstream):
    commit = upstream["commit"]
    r = cli("pull", f"org/clf@{commit[:7]}", "--endpoint", upstream["url"], "--json")
    assert json.loads(r.output)["refs"] == ["main"]
    r = cli("pull", f"org/clf@{commit[:10]}", "--endpoint", upstream["url"], "--json")
    assert json.loads(r.output)["refs"] == ["main"]
    shown = json.loads(cli("show", "org/clf", "--json").output)
    assert [r["refs"] for r in shown["revisions"]] == [["main"]]
    refs = depot.store.hub / "models--org--clf" / "refs"
    assert sorted(p.name for p in refs.iterdir()) == sorted(["main", commit[:7], commit[:10]])
    assert (refs / commit[:7]).read_text() == commit
    assert (refs / commit[:10]).read_text() == commit
    with _app_server(depot) as server:
        body = requests.get(server.url + "/api/models/org/clf/refs").json()
    assert body == {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": commit}],
                    "converts": [], "tags": []}


def test_every_revision_gets_a_short_id_ref_that_goes_with_it(cli, depot, clf, models):
    from registry.importer import import_dir

    second = import_dir(depot, models.get("classifier2"), "org/clf", ref="v2")
    refs = depot.store.hub / "models--org--clf" / "refs"
    assert (refs / clf.commit[:7]).read_text() == clf.commit
    assert (refs / second.commit[:7]).read_text() == second.commit
    r = cli("rm", f"org/clf@{second.commit[:12]}")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in refs.iterdir()) == sorted(["main", clf.commit[:7]])


def test_offline_from_pretrained_at_a_short_id_from_the_cache_view(depot, clf, tmp_path):
    code = ("import sys, transformers;"
            "m = transformers.AutoConfig.from_pretrained('org/clf', revision=sys.argv[1]);"
            "print(m.model_type)")
    env = dict(os.environ, HF_HUB_CACHE=str(depot.store.hub), HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"))
    p = subprocess.run([sys.executable, "-c", code, clf.commit[:7]], env=env,
                       capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout.strip()) == (0, "bert"), p.stderr[-2000:]


# -- item 8: datasets offline by id ---------------------------------------------------------------


def test_dataset_prepare_builds_what_datasets_reads_offline(cli, depot, notes, tmp_path):
    r = cli("dataset", "prepare", "org/notes")
    assert (r.exit_code, r.output) == (0, f"prepared datasets/org/notes@{notes.commit[:12]} config "
                                          "default: train (2 rows), test (1 rows)\n")
    built = depot.settings.datasets_cache / "org___notes" / "default" / "0.0.0" / notes.commit
    assert sorted(p.name for p in built.iterdir()) == [
        "dataset_info.json", "notes-test.arrow", "notes-train.arrow"]
    r = cli("dataset", "prepare", "org/notes", "--json")
    assert json.loads(r.output)["configs"] == [
        {"config": "default", "path": str(built), "splits": {"train": 2, "test": 1}}]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))
    env.update(json.loads(cli("env", "--json").output))
    code = ("import datasets; d = datasets.load_dataset('org/notes');"
            "print(list(d['train']['text']), list(d['test']['label']))")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert (p.returncode, p.stdout.strip()) == (0, "['hello', 'bye'] [1]"), p.stderr[-2000:]


def test_dataset_prepare_builds_every_config(cli, depot, tmp_path):
    from registry.importer import import_dir

    src = tmp_path / "multi"
    for cfg, rows in (("en", "a,1\nb,0\n"), ("fr", "c,1\n")):
        (src / cfg).mkdir(parents=True)
        (src / cfg / "part.csv").write_text("text,label\n" + rows)
    (src / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/*.csv\n"
        "- config_name: fr\n  data_files:\n  - split: train\n    path: fr/*.csv\n---\n")
    result = import_dir(depot, src, "org/multi", repo_type="dataset")
    r = cli("dataset", "prepare", "org/multi")
    assert r.output == (f"prepared datasets/org/multi@{result.commit[:12]} config en: train (2 rows)\n"
                        f"prepared datasets/org/multi@{result.commit[:12]} config fr: train (1 rows)\n")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))
    env.update(json.loads(cli("env", "--json").output))
    code = "import datasets; print(list(datasets.load_dataset('org/multi', 'fr')['train']['text']))"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert (p.returncode, p.stdout.strip()) == (0, "['c']"), p.stderr[-2000:]


# -- item 9: what current clients call -----------------------------------------------------------


def test_agent_harnesses_has_an_empty_valid_answer(depot):
    with _app_server(depot) as server:
        r = requests.get(server.url + "/api/agent-harnesses")
    assert (r.status_code, r.json()) == (200, {"standardEnvVars": [], "harnesses": {}})


def test_env_disables_the_update_check_and_points_at_the_datasets_cache(cli, home):
    local = json.loads(cli("env", "--json").output)
    assert local["HF_HUB_DISABLE_UPDATE_CHECK"] == "1"
    assert local["HF_DATASETS_CACHE"] == str(home / "datasets")
    server = json.loads(cli("env", "--server", "http://depot:8080", "--json").output)
    assert server["HF_HUB_DISABLE_UPDATE_CHECK"] == "1"


# -- item 10: download counts --------------------------------------------------------------------


def test_re_pull_of_an_unchanged_commit_refreshes_upstream_counts(cli, depot, upstream):
    from registry.models import Repo

    def set_upstream(downloads, likes):
        with upstream["depot"].db.session(write=True) as s:
            s.execute(update(Repo).where(Repo.name == "org/clf")
                      .values(downloads=downloads, likes=likes))

    set_upstream(5, 1)
    cli("pull", "org/clf", "--endpoint", upstream["url"])
    assert [(r["name"], r["downloads"]) for r in depot.list_repos()] == [("org/clf", 5)]
    set_upstream(9, 2)
    r = cli("pull", "org/clf", "--endpoint", upstream["url"], "--json")
    assert json.loads(r.output)["created"] is False
    assert [(r["name"], r["downloads"]) for r in depot.list_repos()] == [("org/clf", 9)]
    assert depot.resolve("model", "org/clf")["repo_meta"]["likes"] == 2


def test_served_downloads_follow_the_hub_rule_and_list_shows_them(cli, depot, clf, notes):
    depot.add_repo_name("model", "org/clf", "clf-legacy")
    with _app_server(depot) as server:
        url = server.url
        for _ in range(2):
            assert requests.get(url + "/org/clf/resolve/main/config.json").status_code == 200
        assert requests.head(url + "/org/clf/resolve/main/config.json").status_code == 200
        # through the former name: one redirect, one download of org/clf
        assert requests.get(url + "/clf-legacy/resolve/main/config.json").status_code == 200
        # not query files: weights, the tokenizer, a missing file
        assert requests.get(url + "/org/clf/resolve/main/model.safetensors").status_code == 200
        assert requests.get(url + "/org/clf/resolve/main/vocab.txt").status_code == 200
        assert requests.get(url + "/org/clf/resolve/main/nope.json").status_code == 404
        assert requests.get(url + "/datasets/org/notes/resolve/main/README.md").status_code == 200
        assert requests.get(url + "/datasets/org/notes/resolve/main/train.csv").status_code == 200
    # the counts reach the registry in one batch (here: at shutdown)
    rows = {r["name"]: r["served_downloads"] for r in depot.list_repos()}
    assert rows == {"org/clf": 4, "org/notes": 1}
    with depot.db.session(write=True) as s:
        from registry.models import Repo

        s.execute(update(Repo).where(Repo.name == "org/clf").values(downloads=1234))
    r = cli("list", "--sort", "downloads")
    lines = r.output.splitlines()
    assert lines[0].split() == ["REPO", "TASK", "LIBRARY", "REVS", "DOWNLOADS", "SERVED", "SIZE",
                                "UPDATED"]
    assert lines[2].split()[:6] == ["org/clf", "text-classification", "transformers", "1",
                                    "1,234", "4"]
    assert lines[3].split()[:4] == ["datasets/org/notes", "-", "-", "1"]
    assert lines[3].split()[4:6] == ["-", "1"]
    assert "DOWNLOADS" not in cli("list").output


def test_the_download_counter_batches_and_keeps_counts_on_a_failed_write(depot, clf):
    from registry.download_counts import DownloadCounter

    with depot.db.session() as s:
        _repo, revision = depot.resolve_in(s, "model", "org/clf", None)
        rev_id = revision.id
    counter = DownloadCounter(depot)
    for path in ("config.json", "config.json", "model.safetensors", "meta.yaml"):
        counter.hit("model", rev_id, path)
    statements = []
    from sqlalchemy import event

    listener = lambda *a, **k: statements.append(a[2])  # noqa: E731
    event.listen(depot.db.engine, "before_cursor_execute", listener)
    try:
        assert counter.flush() == 3
    finally:
        event.remove(depot.db.engine, "before_cursor_execute", listener)
    # one lookup of the revisions' repos, one UPDATE per repo
    assert [st.split()[0].upper() for st in statements if st.split()[0].upper() in
            ("SELECT", "UPDATE")] == ["SELECT", "UPDATE"]
    assert counter.flush() == 0
    assert depot.list_repos()[0]["served_downloads"] == 3

    # a write that fails (a locked database, say) keeps its counts for the next flush
    counter.hit("model", rev_id, "config.json")
    real_session = depot.db.session

    def failing_session(*a, **k):
        raise RuntimeError("database is locked")

    depot.db.session = failing_session
    try:
        with pytest.raises(RuntimeError):
            counter.flush()
    finally:
        depot.db.session = real_session
    assert counter.flush() == 1
    assert depot.list_repos()[0]["served_downloads"] == 4


def test_former_names_cross_the_air_gap_in_bundles(cli, depot, clf, tmp_path, models):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    depot.add_repo_name("model", "org/clf", "clf-legacy")
    depot.add_repo_name("model", "org/clf", "taken")
    bundle = tmp_path / "out.mdb"
    r = cli("bundle", "create", str(bundle), "org/clf")
    assert r.exit_code == 0, r.output
    inside_home = tmp_path / "inside"
    # on the inside, "taken" is a repo of its own: the bundle's name for org/clf leaves it be
    import_dir(Depot(Settings.from_env(home=inside_home)), models.get("classifier2"), "taken")
    r = cli("--home", inside_home, "bundle", "import", str(bundle))
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "former name clf-legacy -> org/clf"
    assert json.loads(cli("--home", inside_home, "names", "list", "--json").output) == [
        {"name": "clf-legacy", "type": "model", "repo": "org/clf", "source": "manual"}]
    assert os.readlink(inside_home / "hub" / "models--clf-legacy") == "models--org--clf"
    # importing again adds nothing
    r = cli("--home", inside_home, "bundle", "import", str(bundle), "--json")
    assert json.loads(r.output)["former_names"] == []


def test_a_bundle_with_malformed_former_names_is_refused(cli, depot, clf, tmp_path):
    from registry.bundle import open_bundle, validate_manifest
    from registry.errors import InvalidInput

    bundle = tmp_path / "out.mdb"
    assert cli("bundle", "create", str(bundle), "org/clf").exit_code == 0
    reader, manifest, _files = open_bundle([bundle])
    reader.source.close()
    validate_manifest(manifest, "out.mdb")  # as made: valid
    for bad in ([{"name": "bad--id", "source": "manual"}], [{"name": "x", "source": "guess"}],
                "clf-legacy", [{"name": "x"}]):
        manifest["repos"][0]["former_names"] = bad
        with pytest.raises(InvalidInput) as info:
            validate_manifest(manifest, "out.mdb")
        assert "org/clf: former_names must be a list of {name, source}" in str(info.value)
