"""The web page, end to end in headless Chromium (Debian's, driven by Playwright) against a real
`modeldepot serve` on loopback: the list (search, filter, sort, pages), a repo page (refs, files,
the lineage of an ONNX export, a forced export flagged), a dataset preview with the `--where`
grammar, "try it", the usage snippet loaded with transformers, a hostile card rendered inert, and
no request to any host but the depot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from serverutil import running_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps"]

HOSTILE_CARD = """---
license: mit
---
# Hostile card

<script>window.__pwned = "script";</script>
<img src="x" onerror="window.__pwned='onerror'">
<div onmouseover="window.__pwned='hover'" id="raw-div">raw html block</div>

[click me](javascript:window.__pwned='link')
<a href="javascript:window.__pwned='a'" onclick="window.__pwned='click'" id="raw-a">raw link</a>

![remote](https://images.example.com/track.png)
![local](assets/figure.png)

Some **bold** text and a [safe link](https://example.org/docs).
"""

REVIEWS = [
    {"text": "a good movie", "label": "pos"},
    {"text": "a terrible film", "label": "neg"},
    {"text": "good book, good day", "label": "pos"},
    {"text": "not good", "label": "neg"},
    {"text": "awful", "label": "neg"},
]


def _cli(home: Path, *args) -> dict | str:
    from cli import main

    r = CliRunner().invoke(main, ["--home", str(home), *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def depot_home(tmp_path_factory, models) -> Path:
    home = tmp_path_factory.mktemp("ui") / "home"
    src = tmp_path_factory.mktemp("ui-src")
    clf = src / "clf"
    shutil.copytree(models.get("classifier"), clf)
    (clf / "README.md").write_text(HOSTILE_CARD)
    (clf / "assets").mkdir()
    (clf / "assets" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    _cli(home, "import", clf, "--repo", "acme/sentiment")
    _cli(home, "tag", "acme/sentiment", "prod")
    _cli(home, "onnx", "export", "acme/sentiment")
    _cli(home, "import", models.get("embedder"), "--repo", "acme/embedder")
    _cli(home, "onnx", "export", "acme/embedder", "--quantize", "int8", "--min-agreement", "1",
         "--force")
    for i in range(55):  # more than one page of 50
        _cli(home, "import", models.get("classifier"), "--repo", f"bulk/model-{i:02d}")
    data = src / "reviews"
    data.mkdir()
    import csv

    with open(data / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(REVIEWS)
    (data / "README.md").write_text("---\nlicense: mit\n---\n# Reviews\n")
    _cli(home, "import", data, "--repo", "acme/reviews", "--type", "dataset")
    return home


@pytest.fixture(scope="module")
def server(depot_home):
    with running_server(depot_home) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page that records every request it makes and every dialog it opens."""
    context = browser.new_context()
    pg = context.new_page()
    pg.requests = []
    pg.dialogs = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    foreign = [u for u in pg.requests if not u.startswith(server + "/") and u != server
               and not u.startswith("data:")]
    context.close()
    assert foreign == [], f"the page asked another host: {foreign}"


def _names(pg) -> list[str]:
    return [a.inner_text() for a in pg.query_selector_all("#repos a.repo-link")]


def test_list_search_filter_sort_and_pages_match_the_cli(page, server, depot_home):
    page.goto(server + "/")
    assert page.url == server + "/ui/"
    first = _names(page)
    assert len(first) == 50
    expected = [r["name"] for r in json.loads(_cli(depot_home, "list", "--json"))]
    assert first == expected[:50]
    page.click("#next")
    assert _names(page) == expected[50:100]
    assert "page 2" in page.inner_text("nav.pages")

    page.goto(server + "/ui/")
    page.fill("#search", "acme")
    page.click("#apply")
    assert _names(page) == ["acme/embedder", "acme/reviews", "acme/sentiment"]
    page.select_option("#type", "dataset")
    page.click("#apply")
    assert _names(page) == ["acme/reviews"]
    cli_rows = json.loads(_cli(depot_home, "list", "--json", "--search", "acme", "--type", "dataset"))
    assert [r["name"] for r in cli_rows] == ["acme/reviews"]

    page.goto(server + "/ui/?q=model-0&sort=name")
    assert _names(page) == [f"bulk/model-{i:02d}" for i in range(10)]
    page.goto(server + "/ui/?task=text-classification&q=acme")
    assert _names(page) == ["acme/sentiment"]


def test_bad_list_parameters_are_one_line_errors(server):
    r = requests.get(server + "/ui/", params={"sort": "bogus"})
    assert r.status_code == 422
    assert "unknown sort &#39;bogus&#39;: use one of name, size, updated, downloads" in r.text
    r = requests.get(server + "/ui/", params={"page": "9" * 40})
    assert r.status_code == 422 and "page must be a whole number" in r.text
    r = requests.get(server + "/ui/models/acme/missing")
    assert r.status_code == 404 and "acme/missing" in r.text
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_repo_page_refs_files_and_lineage_of_an_onnx_export(page, server, depot_home):
    page.goto(server + "/ui/?q=acme/sentiment")
    page.click("text=acme/sentiment")
    assert page.inner_text("#repo-name").startswith("acme/sentiment")
    show = json.loads(_cli(depot_home, "show", "acme/sentiment@onnx", "--json"))
    onnx_commit, parent = show["revision"]["commit"], show["revision"]["parent_commit"]
    refs = {row.query_selector_all("td")[0].inner_text(): row.query_selector_all("td")[1].inner_text()
            for row in page.query_selector_all("#refs tbody tr")}
    assert refs == {"main": parent, "prod": parent, "onnx": onnx_commit}
    files = [row.query_selector("td").inner_text() for row in page.query_selector_all("#files tbody tr")]
    main_show = json.loads(_cli(depot_home, "show", "acme/sentiment", "--json"))
    assert files == [f["path"] for f in main_show["revision"]["files"]]
    assert "deduplication saves" in page.inner_text("#disk")

    # the lineage picture: both revisions, the export drawn as derived from its parent
    svg = page.text_content("#lineage svg")
    assert onnx_commit[:10] in svg and parent[:10] in svg and "onnx" in svg
    page.click(f"#lineage svg >> text={onnx_commit[:10]}")
    assert page.inner_text("#commit") == onnx_commit
    assert "fp32" in page.inner_text("#validation")
    assert page.query_selector("#forced") is None


def test_a_forced_export_is_flagged(page, server, depot_home):
    page.goto(server + "/ui/models/acme/embedder?rev=onnx")
    assert "below its validation floor" in page.inner_text("#forced")
    assert "forced" in page.inner_text("#validation")


def test_dataset_preview_with_the_where_grammar(page, server, depot_home):
    page.goto(server + "/ui/datasets/acme/reviews")
    assert "label" in page.inner_text("#dataset .features")
    assert [r.inner_text() for r in page.query_selector_all("#rows tbody tr td:first-child")] == \
        [r["text"] for r in REVIEWS]
    page.fill("#where", "label == 'neg' and text contains 'o'")
    page.click("#head-apply")
    shown = [r.inner_text() for r in page.query_selector_all("#rows tbody tr td:first-child")]
    cli_rows = json.loads(_cli(depot_home, "dataset", "head", "acme/reviews", "--where",
                               "label == 'neg' and text contains 'o'", "--json"))["rows"]
    assert shown == [r["text"] for r in cli_rows] == ["not good"]
    page.fill("#where", "label ==")
    page.click("#head-apply")
    assert "label" in page.inner_text("#head-error")


def test_try_it_shows_the_label(page, server):
    page.goto(server + "/ui/models/acme/sentiment")
    page.fill("#try-input", "what a great movie")
    page.click("#try-run")
    page.wait_for_selector("#try-answer .bar")
    shown = [b.inner_text() for b in page.query_selector_all("#try-answer .bar .label")]
    api = requests.post(server + "/models/acme/sentiment", json={"inputs": "what a great movie"}).json()
    while isinstance(api, list) and len(api) == 1 and isinstance(api[0], list):
        api = api[0]
    assert shown == [x["label"] for x in api]


def test_usage_snippet_loads_with_transformers(page, server, tmp_path):
    page.goto(server + "/ui/models/acme/sentiment")
    snippet = page.inner_text("#snippet-python")
    assert f'os.environ["HF_ENDPOINT"] = "{server}"' in snippet
    code = snippet + "\nprint(type(model).__name__, tokenizer('hi')['input_ids'])\n"
    env = {**os.environ, "HF_HOME": str(tmp_path / "client"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("BertModel [")
    assert f"hf download acme/sentiment --revision main" in page.inner_text("#snippet-hf")


def test_hostile_card_is_inert(page, server):
    page.goto(server + "/ui/models/acme/sentiment")
    page.wait_for_selector("#card article")
    page.hover("#card article")
    for link in page.query_selector_all("#card a"):
        href = link.get_attribute("href") or ""
        assert not href.lower().startswith("javascript"), href
    assert page.evaluate("window.__pwned === undefined")
    assert page.dialogs == []
    # no element from the card carries a script, an event handler or a remote reference
    found = page.evaluate("""() => {
        const els = Array.from(document.querySelectorAll('#card article *'));
        return {
            tags: els.map(e => e.tagName.toLowerCase()),
            handlers: els.flatMap(e => Array.from(e.attributes).map(a => a.name))
                         .filter(n => n.startsWith('on')),
            srcs: els.map(e => e.getAttribute('src')).filter(Boolean),
        };
    }""")
    assert not {"script", "iframe", "div", "object", "embed"} & set(found["tags"])
    assert found["handlers"] == []
    assert all(s.startswith("/acme/sentiment/resolve/") for s in found["srcs"]), found["srcs"]
    card = page.inner_html("#card article")
    assert "&lt;script&gt;" in card  # the raw HTML is shown as text
    assert "<strong>bold</strong>" in card
    assert page.get_attribute("#card img[alt=remote]", "src") is None  # never fetched
    local = page.query_selector("#card img[alt=local]")
    assert local is not None
    assert re.search(r"/acme/sentiment/resolve/[0-9a-f]{40}/assets/figure.png$",
                     local.get_attribute("src"))


def test_operations_page(page, server, depot_home):
    _cli(depot_home, "verify")
    page.goto(server + "/ui/ops")
    assert "clean" in page.inner_text("#verify")
    disk = page.inner_text("#disk")
    assert "acme/sentiment" in disk
    page.goto(server + "/ui/ops?kind=tag")
    events = page.inner_text("#events")
    assert "prod" in events and "import" not in events.split("\n", 1)[1]


# -- with access control on ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, models):
    """A depot served with --auth required: a public repo, a private one, and three tokens."""
    from registry.auth.tokens import create_token
    from registry.auth.visibility import grant, set_visibility
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    root = tmp_path_factory.mktemp("ui-auth")
    home = root / "home"
    depot = Depot(Settings.from_env(home=home))
    for name in ("team/public-model", "team/secret-model"):
        import_dir(depot, models.get("classifier"), name)
    set_visibility(depot, "model", "team/secret-model", "private")
    secrets = {}
    for name, scopes in (("reader", ["read"]), ("insider", ["read"]), ("boss", ["admin"])):
        secrets[name], _ = create_token(depot, name, scopes, actor="test")
    grant(depot, "insider", "model", "team/secret-model", "test")
    with running_server(home, ["--no-inference", "--auth", "required"]) as url:
        yield {"url": url, "home": home, "root": root, "secrets": secrets}


def _sign_in(page, url: str, secret: str) -> None:
    page.goto(url + "/ui/")
    assert "/ui/login" in page.url  # the page asks for a token
    page.fill("#token", secret)
    page.click("#login")


def test_signed_out_the_page_asks_for_a_token(browser, guarded):
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(guarded["url"] + "/ui/models/team/public-model")
    from urllib.parse import unquote

    assert unquote(pg.url) == guarded["url"] + "/ui/login?next=/ui/models/team/public-model"
    assert pg.query_selector("#token") is not None
    pg.fill("#token", "mdp_not-a-real-token")
    pg.click("#login")
    assert "that token is not valid" in pg.inner_text("#login-error")
    context.close()


def test_private_repos_need_the_right_token_and_the_token_stays_out_of_urls(browser, guarded):
    url, secrets = guarded["url"], guarded["secrets"]
    seen: list[str] = []
    for who, sees_secret in (("reader", False), ("insider", True)):
        context = browser.new_context()
        pg = context.new_page()
        pg.on("request", lambda r: seen.append(r.url))
        _sign_in(pg, url, secrets[who])
        assert pg.url == url + "/ui/"
        assert f"signed in as {who}" in pg.inner_text("header .who")
        names = _names(pg)
        assert "team/public-model" in names
        assert ("team/secret-model" in names) is sees_secret
        pg.goto(url + "/ui/?q=secret")
        assert (_names(pg) == ["team/secret-model"]) is sees_secret
        r = pg.goto(url + "/ui/models/team/secret-model")
        if sees_secret:
            assert r.status == 200 and pg.inner_text("#repo-name").startswith("team/secret-model")
        else:  # exactly what a repo that does not exist gets
            assert r.status == 404
            missing = pg.goto(url + "/ui/models/team/no-such-model")
            assert missing.status == 404
        # the operations view (the access audit) is for admins
        r = pg.goto(url + "/ui/ops")
        assert r.status == 403
        pg.click("#logout")
        pg.goto(url + "/ui/")
        assert "/ui/login" in pg.url
        context.close()
    # an admin sees the access audit, with the refusal above in it
    context = browser.new_context()
    pg = context.new_page()
    _sign_in(pg, url, secrets["boss"])
    pg.goto(url + "/ui/ops?token=reader")
    assert "team/secret-model" in pg.inner_text("#access")
    context.close()
    for secret in secrets.values():
        assert not any(secret in u for u in seen), "a token went into a URL"
    leaked = [p for p in guarded["home"].parent.rglob("*") if p.is_file() and p.suffix in (".log", ".out")
              and any(s in p.read_text(errors="replace") for s in secrets.values())]
    assert leaked == []
