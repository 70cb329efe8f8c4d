"""Datasets offline: import (with data-file checks), discovery as `datasets` does it, `dataset info`,
`dataset head --where`, the registry commands on dataset repos, and loading from the HF cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from registry.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent

# The source rows; the tests compute what every filter must return from these.
REVIEWS_TRAIN = [
    {"text": "a good movie", "label": 1, "score": 0.91, "lang": "en"},
    {"text": "a terrible film", "label": 0, "score": 0.12, "lang": "en"},
    {"text": "Good book, good day", "label": 1, "score": 0.77, "lang": None},
    {"text": "un bon film", "label": 1, "score": 0.66, "lang": "fr"},
    {"text": "awful. just awful", "label": 0, "score": 0.05, "lang": "en"},
    {"text": "it's 'fine'", "label": 0, "score": 0.5, "lang": "en"},
    {"text": "ein gutes Buch", "label": 1, "score": 0.8, "lang": "de"},
    {"text": "not good", "label": 0, "score": 0.31, "lang": "en"},
]
REVIEWS_TEST = [
    {"text": "good enough", "label": 1, "score": 0.6, "lang": "en"},
    {"text": "bad", "label": 0, "score": 0.2, "lang": "en"},
    {"text": "mauvais", "label": 0, "score": 0.1, "lang": "fr"},
]
NOTES_TRAIN = [
    {"id": 1, "note": "buy milk", "done": True},
    {"id": 2, "note": "call paris office, then berlin", "done": False},
    {"id": 3, "note": "write the report", "done": False},
]
NOTES_VALIDATION = [{"id": 4, "note": "milk again", "done": True}]
REVIEWS_CARD = """---
license: mit
task_categories:
- text-classification
---
# Reviews

Tiny movie and book reviews, labelled positive or negative.

More text here.
"""


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Tiny dataset directories as people push them: parquet with a card, CSV, JSON lines, and a
    card with two configs."""
    import datasets

    root = tmp_path_factory.mktemp("dataset-sources")
    features = datasets.Features({
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["neg", "pos"]),
        "score": datasets.Value("float64"),
        "lang": datasets.Value("string"),
    })
    reviews = root / "reviews"
    (reviews / "data").mkdir(parents=True)
    for split, rows in (("train", REVIEWS_TRAIN), ("test", REVIEWS_TEST)):
        ds = datasets.Dataset.from_list(rows, features=features)
        ds.to_parquet(str(reviews / "data" / f"{split}-00000-of-00001.parquet"))
    (reviews / "README.md").write_text(REVIEWS_CARD)

    notes = root / "notes"
    notes.mkdir()
    _write_csv(notes / "train.csv", NOTES_TRAIN)
    _write_csv(notes / "validation.csv", NOTES_VALIDATION)

    events = root / "events"
    (events / "data").mkdir(parents=True)
    (events / "data" / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in NOTES_TRAIN))

    multi = root / "multi"
    for cfg, rows in (("en", REVIEWS_TRAIN[:2]), ("fr", REVIEWS_TRAIN[3:4])):
        (multi / cfg).mkdir(parents=True)
        _write_csv(multi / cfg / "part.csv", rows)
    (multi / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/*.csv\n"
        "- config_name: fr\n  default: true\n  data_files: fr/*.csv\n---\nTwo languages.\n"
    )
    return {"reviews": reviews, "notes": notes, "events": events, "multi": multi}


@pytest.fixture
def imported(cli, sources):
    """The reviews (parquet) and notes (CSV) datasets imported into the test's depot."""
    commits = {}
    for name in ("reviews", "notes"):
        r = cli("import", sources[name], "--repo", f"org/{name}", "--type", "dataset", "--json")
        assert r.exit_code == 0, r.output
        commits[name] = json.loads(r.output)["commit"]
    return commits


def head_rows(cli, repo, *args) -> list[dict]:
    r = cli("dataset", "head", repo, *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)["rows"]


# -- info ------------------------------------------------------------------------------------


def test_info_gives_features_splits_and_row_counts(cli, imported, depot):
    r = cli("dataset", "info", "org/reviews", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    files = {f["path"]: f["size"] for f in depot.resolve("dataset", "org/reviews")["files"]}
    train, test = "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"
    assert info == {
        "repo": "org/reviews",
        "commit": imported["reviews"],
        "license": "mit",
        "description": "# Reviews\n\nTiny movie and book reviews, labelled positive or negative."
                       "\n\nMore text here.",
        "size": sum(files.values()),
        "configs": [{
            "name": "default",
            "default": True,
            "format": "parquet",
            "columns": [
                {"name": "text", "type": "string", "feature": "Value('string')"},
                {"name": "label", "type": "int64", "feature": "ClassLabel(names=['neg', 'pos'])"},
                {"name": "score", "type": "double", "feature": "Value('float64')"},
                {"name": "lang", "type": "string", "feature": "Value('string')"},
            ],
            "features": {
                "text": {"dtype": "string", "_type": "Value"},
                "label": {"names": ["neg", "pos"], "_type": "ClassLabel"},
                "score": {"dtype": "float64", "_type": "Value"},
                "lang": {"dtype": "string", "_type": "Value"},
            },
            "splits": [
                {"name": "train", "rows": 8, "size": files[train], "files": [train]},
                {"name": "test", "rows": 3, "size": files[test], "files": [test]},
            ],
            "rows": 11,
            "size": files[train] + files[test],
        }],
    }


def test_info_csv_splits_from_file_names_and_text_output(cli, imported):
    info = json.loads(cli("dataset", "info", "org/notes", "--json").output)
    (cfg,) = info["configs"]
    assert cfg["format"] == "csv"
    assert [(s["name"], s["rows"], s["files"]) for s in cfg["splits"]] == [
        ("train", 3, ["train.csv"]), ("validation", 1, ["validation.csv"])]
    assert [(c["name"], c["type"]) for c in cfg["columns"]] == [
        ("id", "int64"), ("note", "string"), ("done", "bool")]

    out = cli("dataset", "info", "org/reviews").output
    assert out.splitlines()[1:4] == [
        "  license: mit",
        "  Tiny movie and book reviews, labelled positive or negative.",
        "",
    ]
    assert "config default: parquet, 11 rows" in out
    assert "label   ClassLabel(names=['neg', 'pos'])" in out


def test_info_multi_config_card_and_head_config(cli, sources):
    assert cli("import", sources["multi"], "--repo", "org/multi", "--type", "dataset").exit_code == 0
    info = json.loads(cli("dataset", "info", "org/multi", "--json").output)
    assert [(c["name"], c["default"], [(s["name"], s["rows"], s["files"]) for s in c["splits"]])
            for c in info["configs"]] == [
        ("en", False, [("train", 2, ["en/part.csv"])]),
        ("fr", True, [("train", 1, ["fr/part.csv"])]),
    ]
    assert [r["text"] for r in head_rows(cli, "org/multi")] == ["un bon film"]
    assert [r["text"] for r in head_rows(cli, "org/multi", "--config", "en")] == [
        "a good movie", "a terrible film"]
    r = cli("dataset", "head", "org/multi", "--config", "de")
    assert (r.exit_code, r.output) == (1, "Error: config 'de' not found in org/multi; configs: en, fr\n")


def test_json_lines_and_json_document_datasets(cli, sources, tmp_path):
    assert cli("import", sources["events"], "--repo", "org/events", "--type", "dataset").exit_code == 0
    assert head_rows(cli, "org/events", "--where", "done == false") == NOTES_TRAIN[1:]
    doc = tmp_path / "doc"
    doc.mkdir()
    (doc / "train.json").write_text(json.dumps(NOTES_TRAIN, indent=1))
    (doc / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: train.json\n"
                                   "  field: rows\n---\n")
    assert cli("import", doc, "--repo", "org/doc", "--type", "dataset").exit_code == 0
    r = cli("dataset", "head", "org/doc")
    assert (r.exit_code, r.output) == (
        1, "Error: train.json holds no list of records under 'rows' (the card's 'field')\n")
    (doc / "README.md").unlink()
    assert cli("import", doc, "--repo", "org/doc", "--type", "dataset").exit_code == 0
    assert head_rows(cli, "org/doc", "--where", "note contains 'report'", "-n", "5") == NOTES_TRAIN[2:]
    info = json.loads(cli("dataset", "info", "org/doc", "--json").output)
    assert [(s["name"], s["rows"]) for s in info["configs"][0]["splits"]] == [("train", 3)]


# -- head --where ----------------------------------------------------------------------------


REVIEW_FILTERS = [
    ("text contains 'good'", lambda r: "good" in r["text"]),
    ("text icontains 'GOOD'", lambda r: "good" in r["text"].lower()),
    ("label == 1", lambda r: r["label"] == 1),
    ("label = 'pos'", lambda r: r["label"] == 1),
    ("score > 0.5", lambda r: r["score"] > 0.5),
    ("score >= 0.5 and not text contains 'good'", lambda r: r["score"] >= 0.5 and "good" not in r["text"]),
    ("label == 0 or score > 0.9 and lang == 'en'",
     lambda r: r["label"] == 0 or (r["score"] > 0.9 and r["lang"] == "en")),
    ("(label == 0 or score > 0.9) and lang == 'en'",
     lambda r: (r["label"] == 0 or r["score"] > 0.9) and r["lang"] == "en"),
    ("lang in ('fr', 'de')", lambda r: r["lang"] in ("fr", "de")),
    ("lang not in ('en',)", lambda r: r["lang"] is not None and r["lang"] != "en"),
    ("lang != 'en'", lambda r: r["lang"] is not None and r["lang"] != "en"),
    ("lang is null", lambda r: r["lang"] is None),
    ("lang IS NOT NULL AND text startswith 'a'", lambda r: r["lang"] is not None and r["text"].startswith("a")),
    ("text endswith 'film'", lambda r: r["text"].endswith("film")),
    ("text matches '^[a-z]+ (good|bon)'", lambda r: re.search("^[a-z]+ (good|bon)", r["text"])),
    ("text == 'it\\'s \\'fine\\''", lambda r: r["text"] == "it's 'fine'"),
    ('`text` == "a good movie"', lambda r: r["text"] == "a good movie"),
    ("score < -1", lambda r: False),
    ("label < 99999999999999999999999", lambda r: True),
]


@pytest.mark.parametrize("where,keep", REVIEW_FILTERS, ids=[w for w, _ in REVIEW_FILTERS])
def test_head_where_returns_exactly_the_matching_rows(cli, imported, where, keep):
    assert head_rows(cli, "org/reviews", "--where", where, "-n", "100") == [
        r for r in REVIEWS_TRAIN if keep(r)]


def test_head_split_columns_limit_and_csv(cli, imported):
    assert head_rows(cli, "org/reviews", "--split", "test", "--columns", "score,text") == [
        {"score": r["score"], "text": r["text"]} for r in REVIEWS_TEST]
    assert head_rows(cli, "org/reviews", "-n", "2", "--where", "label == 0") == [
        REVIEWS_TRAIN[1], REVIEWS_TRAIN[4]]
    assert head_rows(cli, "org/reviews", "-n", "0") == []
    assert head_rows(cli, "org/notes", "--where", "note contains 'milk'") == [NOTES_TRAIN[0]]
    assert head_rows(cli, "org/notes", "--split", "validation", "--where", "done == true") == NOTES_VALIDATION
    assert head_rows(cli, "org/notes", "--where", "id >= 2 and id < 3", "--columns", "note") == [
        {"note": NOTES_TRAIN[1]["note"]}]


def test_head_json_shape_and_text_output(cli, imported):
    r = cli("dataset", "head", f"org/notes@{imported['notes'][:10]}", "-n", "1", "--json")
    assert json.loads(r.output) == {
        "repo": "org/notes", "commit": imported["notes"], "config": "default", "split": "train",
        "where": None, "columns": ["id", "note", "done"], "rows": [NOTES_TRAIN[0]],
    }
    r = cli("dataset", "head", "org/notes", "--where", "done == false")
    assert r.exit_code == 0
    assert r.output == (
        "id  note                            done\n"
        "--  ------------------------------  -----\n"
        "2   call paris office, then berlin  false\n"
        "3   write the report                false\n"
    )
    r = cli("dataset", "head", "org/notes", "--where", "note contains 'zebra'")
    assert r.output == "no rows in org/notes (train) match \"note contains 'zebra'\"\n"


@pytest.mark.parametrize("where,want", [
    ("day >= '2024-02-01'", [1, 2]),
    ("day < '2024-02-01' or flag == true", [0, 2]),
    ("not flag == true and n > 1", [1]),
    ("not (flag == true or n > 1)", [0]),
    ("n in (1, 3) and not n == 3", [0]),
    ("n between 1", None),
])
def test_compile_where_dates_booleans_and_precedence(where, want):
    import datetime

    import pyarrow as pa

    from registry.dataset import compile_where

    table = pa.table({"day": pa.array([datetime.date(2024, 1, 5), datetime.date(2024, 2, 1),
                                       datetime.date(2024, 3, 9)], pa.date32()),
                      "flag": [False, False, True], "n": [1, 2, 3]})
    table = table.append_column("i", pa.array(range(3)))
    if want is None:
        with pytest.raises(InvalidInput, match="expected a comparison after 'n'"):
            compile_where(where, table.schema)
        return
    assert table.filter(compile_where(where, table.schema))["i"].to_pylist() == want


def test_head_help_documents_the_where_language(cli):
    r = cli("dataset", "head", "--help")
    assert r.exit_code == 0
    assert "text contains 'good' and label == 1" in r.output
    assert "COLUMN is [not] null" in r.output


# -- bad input -------------------------------------------------------------------------------


BAD_HEAD = [
    (["--split", "validation"],
     "split 'validation' not found in org/reviews; splits: train, test"),
    (["--columns", "text,stars"],
     "column 'stars' not found in org/reviews (train); columns: text, label, score, lang"),
    (["--where", "stars > 3"],
     "column 'stars' not found in org/reviews (train); columns: text, label, score, lang"),
    (["--where", "text == 1"],
     "bad --where expression: 'text' holds text: quote the value, e.g. text == '1'"),
    (["--where", "score > 'high'"],
     "bad --where expression: 'score' holds numbers: compare it with a number, not 'high'"),
    (["--where", "label == 'meh'"],
     "bad --where expression: 'meh' is not a label of 'label'; labels: neg, pos"),
    (["--where", "score contains 'x'"],
     "bad --where expression: 'contains' needs a text column; 'score' is double"),
    (["--where", "label =="],
     "bad --where expression: expected a number, a 'quoted string', true or false, found the end "
     "at character 9 of 'label =='; see 'modeldepot dataset head --help'"),
    (["--where", "label == 1 label == 0"],
     "bad --where expression: expected 'and', 'or' or the end, found 'label' at character 12 of "
     "'label == 1 label == 0'; see 'modeldepot dataset head --help'"),
    (["--where", "(label == 1"],
     "bad --where expression: expected ')', found the end at character 12 of '(label == 1'; "
     "see 'modeldepot dataset head --help'"),
    (["--where", "__import__('os') == 1"],
     "column '__import__' not found in org/reviews (train); columns: text, label, score, lang"),
    (["--where", "label(1) == 1"],
     "bad --where expression: expected a comparison after 'label' (==, !=, <, <=, >, >=, "
     "contains, startswith, endswith, matches, in, is null), found '(1)' at character 6 of "
     "'label(1) == 1'; see 'modeldepot dataset head --help'"),
    (["--where", "label; rm -rf /"],
     "bad --where expression: unexpected ';' at character 6 of 'label; rm -rf /'; "
     "see 'modeldepot dataset head --help'"),
    (["--where", "  "], "bad --where expression: it is empty"),
    (["--where", "text matches '('"],
     "bad --where expression: Invalid regular expression: missing ): ("),
]


@pytest.mark.parametrize("args,message", BAD_HEAD, ids=[" ".join(a) for a, _ in BAD_HEAD])
def test_head_bad_input_is_one_line(cli, imported, args, message):
    r = cli("dataset", "head", "org/reviews", *args)
    assert (r.exit_code, r.output) == (1, f"Error: {message}\n")


def test_where_fuzz_never_crashes():
    """Random well-formed and ill-typed expressions: each is refused with InvalidInput or gives an
    expression that pyarrow evaluates; nothing else escapes (no traceback for any input)."""
    import datetime
    import random

    import pyarrow as pa

    from registry.dataset import compile_where

    table = pa.table({"text": ["a", None, "b c"], "n": [1, 2, None], "x": [0.5, None, 2.0],
                      "flag": [True, False, None], "tags": [["a"], [], None],
                      "day": pa.array([datetime.date(2024, 1, 1), None, datetime.date(2024, 3, 1)])})
    rng = random.Random(7)
    lits = ["'a'", "'2024-01-01'", "1", "-2", "0.5", "true", "false", "99999999999999999999999",
            "'('", "'[a-'", "'it\\'s'"]

    def pred():
        c, k = rng.choice(table.column_names + ["nope"]), rng.randrange(6)
        if k == 0:
            return f"{c} {rng.choice(['==', '!=', '<', '<=', '>', '>=', '='])} {rng.choice(lits)}"
        if k == 1:
            return (f"{c} {rng.choice(['', 'not '])}{rng.choice(['contains', 'icontains', 'startswith', 'endswith', 'matches'])} "
                    f"{rng.choice(lits)}")
        if k == 2:
            return f"{c} {rng.choice(['', 'not '])}in ({', '.join(rng.choices(lits, k=rng.randint(1, 3)))})"
        if k == 3:
            return f"{c} is {rng.choice(['', 'not '])}null"
        if k == 4:
            return " ".join(rng.choices(lits + ["(", ")", "and", "or", "not", "in", ",", c], k=3))
        return f"({expr(2)})"

    def expr(depth=3):
        if depth == 0 or rng.random() < 0.4:
            return ("not " if rng.random() < 0.2 else "") + pred()
        return f"{expr(depth - 1)} {rng.choice(['and', 'or'])} {expr(depth - 1)}"

    outcomes = {"refused": 0, "evaluated": 0}
    for _ in range(1500):
        text = expr()
        try:
            compiled = compile_where(text, table.schema)
        except InvalidInput:
            outcomes["refused"] += 1
            continue
        table.filter(compiled)
        outcomes["evaluated"] += 1
    assert outcomes["refused"] > 100 and outcomes["evaluated"] > 100, outcomes


def _tree(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if "locks" not in p.parts and not p.name.startswith("depot.db"))


def _truncated_parquet(d: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": list(range(1000))}), d / "train.parquet")
    data = (d / "train.parquet").read_bytes()
    (d / "train.parquet").write_bytes(data[:-20])


MALFORMED = [
    ("not-parquet", lambda d: (d / "train.parquet").write_bytes(b"PAR1 this is not parquet"),
     "train.parquet is not a valid parquet file (Parquet magic bytes not found in footer. Either "
     "the file is corrupted or this is not a parquet file.); fix or remove it and import again"),
    ("truncated-parquet", _truncated_parquet,
     "train.parquet is not a valid parquet file (Parquet magic bytes not found in footer. Either "
     "the file is corrupted or this is not a parquet file.); fix or remove it and import again"),
    ("ragged-csv", lambda d: (d / "data").mkdir() or (d / "data" / "test.csv").write_text(
        "a,b\n1,2\n3,4,5\n"),
     "data/test.csv is not a valid CSV file (CSV parse error: Expected 2 columns, got 3: 3,4,5); "
     "fix or remove it and import again"),
    ("empty-csv", lambda d: (d / "train.csv").write_text(""),
     "train.csv is not a valid CSV file (Empty CSV file); fix or remove it and import again"),
    ("bad-jsonl", lambda d: (d / "train.jsonl").write_text('{"a": 1}\n{"a": \n'),
     "train.jsonl is not a valid JSON file (JSON parse error: Invalid value. in row 1); "
     "fix or remove it and import again"),
    ("bad-json", lambda d: (d / "train.json").write_text('[{"a": 1},'),
     "train.json is not a valid JSON file (Expecting value: line 1 column 11 (char 10)); "
     "fix or remove it and import again"),
]


@pytest.mark.parametrize("make,message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_import_refuses_malformed_data_files_and_stores_nothing(cli, imported, home, tmp_path,
                                                                 make, message):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "README.md").write_text("a dataset\n")
    make(src)
    before_list, before_tree = cli("list", "--json").output, _tree(home)
    r = cli("import", src, "--repo", "org/bad", "--type", "dataset")
    assert (r.exit_code, r.output) == (1, f"Error: {message}\n")
    assert cli("list", "--json").output == before_list
    assert _tree(home) == before_tree


def test_validate_accepts_what_datasets_loads(tmp_path):
    """Mixed-type CSV columns and JSON documents are data, not damage."""
    from registry.dataset import validate_data_files

    (tmp_path / "a.csv").write_text("x\n" + "1\n" * 5000 + "word\n")
    (tmp_path / "b.json").write_text(json.dumps([{"x": 1}, {"x": 2}]))
    (tmp_path / "c.tsv").write_text("x\ty\n1\t2\n")
    validate_data_files(tmp_path, ["a.csv", "b.json", "c.tsv", "README.md"])
    (tmp_path / "d.tsv").write_text("x\ty\n1\t2\t3\n")
    with pytest.raises(InvalidInput, match=r"^d.tsv is not a valid CSV file \(CSV parse error"):
        validate_data_files(tmp_path, ["d.tsv"])


def test_model_and_dataset_mixups_are_one_line(cli, imported, models):
    assert cli("import", models.get("classifier"), "--repo", "org/clf").exit_code == 0
    cases = [
        (["show", "org/reviews"],
         "model repo 'org/reviews' is not in the depot; it is a dataset repo (use --type dataset)"),
        (["show", "org/clf", "--type", "dataset"],
         "dataset repo 'org/clf' is not in the depot; it is a model repo (use --type model)"),
        (["rm", "org/reviews"],
         "model repo 'org/reviews' is not in the depot; it is a dataset repo (use --type dataset)"),
        (["dataset", "info", "org/clf"],
         "org/clf is a model repo, not a dataset; 'modeldepot dataset' reads datasets only "
         "(see 'modeldepot show org/clf')"),
        (["dataset", "head", "org/missing"],
         "dataset 'org/missing' is not in the depot; add it with 'modeldepot pull --type dataset "
         "org/missing' or 'modeldepot import DIR --repo org/missing --type dataset'"),
        (["dataset", "info", "org/reviews@v9"],
         "revision 'v9' of org/reviews is not in the depot; see 'modeldepot show org/reviews'"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert (r.exit_code, r.output) == (1, f"Error: {message}\n"), args


# -- registry commands on datasets -----------------------------------------------------------


def test_list_show_verify_rm_cover_datasets(cli, imported, home):
    rows = json.loads(cli("list", "--type", "dataset", "--json").output)
    assert [(r["name"], r["type"], r["revisions"]) for r in rows] == [
        ("org/notes", "dataset", 1), ("org/reviews", "dataset", 1)]
    assert json.loads(cli("list", "--type", "model", "--json").output) == []
    assert "datasets/org/reviews" in cli("list").output

    show = json.loads(cli("show", "org/reviews", "--type", "dataset", "--json").output)
    assert show["repo"]["type"] == "dataset"
    assert show["repo"]["license"] == "mit"
    assert show["revision"]["commit"] == imported["reviews"]
    assert sorted(f["path"] for f in show["revision"]["files"]) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert {f["path"]: f["lfs"] for f in show["revision"]["files"]}[
        "data/train-00000-of-00001.parquet"] is True

    r = cli("verify", "org/reviews", "--type", "dataset", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["ok"] is True
    snap = home / "hub" / "datasets--org--reviews" / "snapshots" / imported["reviews"]
    blob = (snap / "data/train-00000-of-00001.parquet").resolve()
    os.chmod(blob, 0o644)
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    r = cli("verify", "org/reviews", "--type", "dataset", "--json")
    assert r.exit_code == 1
    assert [(p["problem"], p["path"]) for p in json.loads(r.output)["problems"]] == [
        ("corrupt", "data/train-00000-of-00001.parquet")]

    r = cli("rm", "org/notes", "--type", "dataset", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["repo_removed"] is True
    assert not (home / "hub" / "datasets--org--notes").exists()
    r = cli("dataset", "info", "org/notes")
    assert r.exit_code == 1 and r.output.startswith("Error: dataset 'org/notes' is not in the depot")


# -- HF clients, offline, from the depot's HF cache ------------------------------------------


OFFLINE_LOAD = r"""
import json, sys
import datasets
from huggingface_hub import snapshot_download
repo = sys.argv[1]
out = {}
try:
    datasets.load_dataset(repo, split="train")
    out["by_id"] = "loaded"
except ConnectionError as e:
    out["by_id"] = str(e)
path = snapshot_download(repo, repo_type="dataset")
out["path"] = path
out["train"] = datasets.load_dataset(path, split="train").to_list()
builder = datasets.load_dataset_builder(path)
out["features"] = builder.info.features.to_dict()
print(json.dumps(out))
"""


def test_datasets_loads_offline_from_the_depot_cache(cli, imported, home, tmp_path, guard_log):
    env = dict(os.environ, HF_HUB_CACHE=str(home / "hub"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    p = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, "org/reviews"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # datasets 5 resolves a repo id offline only from its own prepared cache (HF_DATASETS_CACHE),
    # never from the hub cache: the documented way is snapshot_download + load_dataset(path).
    assert out["by_id"] == "Couldn't reach 'org/reviews' on the Hub (OfflineModeIsEnabled)"
    assert out["path"] == str(home / "hub" / "datasets--org--reviews" / "snapshots" / imported["reviews"])
    assert out["train"] == REVIEWS_TRAIN
    assert out["features"]["label"] == {"names": ["neg", "pos"], "_type": "ClassLabel"}
    assert guard_log() == ""


# -- depot A -> pull -> depot B -> datasets through HF_ENDPOINT ------------------------------


ONLINE_LOAD = r"""
import json, sys
import datasets
datasets.disable_progress_bars()
out = {
    "reviews_train": datasets.load_dataset("org/reviews", split="train").to_list(),
    "reviews_test": datasets.load_dataset("org/reviews", split="test").to_list(),
    "notes_validation": datasets.load_dataset("org/notes", split="validation").to_list(),
}
builder = datasets.load_dataset_builder("org/reviews")
out["features"] = builder.info.features.to_dict()
out["splits"] = sorted(builder.config.data_files)
print(json.dumps(out))
"""


def test_dataset_goes_from_depot_a_to_b_and_loads_through_the_hub_api(cli, sources, models,
                                                                      tmp_path, guard_log):
    from serverutil import running_server

    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("reviews", "notes"):
        assert cli("--home", a, "import", sources[name], "--repo", f"org/{name}",
                   "--type", "dataset").exit_code == 0
    assert cli("--home", a, "import", models.get("classifier"), "--repo", "org/clf").exit_code == 0
    info_a = cli("--home", a, "dataset", "info", "org/reviews", "--json").output

    with running_server(a) as url_a:
        for name in ("reviews", "notes"):
            r = cli("--home", b, "pull", f"org/{name}", "--type", "dataset", "--endpoint", url_a)
            assert r.exit_code == 0, r.output
        for args, label, other in ((["org/reviews"], "org/reviews", "dataset"),
                                   (["org/clf", "--type", "dataset"], "datasets/org/clf", "model")):
            r = cli("--home", b, "pull", *args, "--endpoint", url_a)
            assert (r.exit_code, r.output) == (1, (
                f"Error: {label} was not found on {url_a} (if it is private, pass a token with "
                f"--token or HF_TOKEN; if it is a {other}, add --type {other}); check the repo id "
                "with 'modeldepot search'\n"))

    assert cli("--home", b, "dataset", "info", "org/reviews", "--json").output == info_a
    assert json.loads(cli("--home", b, "verify", "--json").output)["ok"] is True
    r = cli("--home", b, "dataset", "head", "org/notes", "--where", "note contains 'paris'", "--json")
    assert json.loads(r.output)["rows"] == [NOTES_TRAIN[1]]

    # Without HF_UPDATE_DOWNLOAD_COUNTS=0, datasets pings s3.amazonaws.com on every load.
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
           "HF_HUB_DISABLE_XET": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    with running_server(b) as url_b:
        p = subprocess.run([sys.executable, "-c", ONLINE_LOAD], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, HF_ENDPOINT=url_b, **env))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["reviews_train"] == REVIEWS_TRAIN
    assert out["reviews_test"] == REVIEWS_TEST
    assert out["notes_validation"] == NOTES_VALIDATION
    assert out["features"]["label"] == {"names": ["neg", "pos"], "_type": "ClassLabel"}
    assert out["splits"] == ["test", "train"]
    # datasets asks 'datasets-server.<endpoint host>' for exported dataset infos (a hard-coded
    # host pattern, not HF_ENDPOINT); the guard refuses that lookup and datasets carries on.
    assert {line.split(" ", 1)[1] for line in guard_log().splitlines()} <= {
        "resolve datasets-server.127.0.0.1"}

    p = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, "org/reviews"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HF_HUB_CACHE=str(b / "hub"), HF_HUB_OFFLINE="1",
                                HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-offline")))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["train"] == REVIEWS_TRAIN


# -- the card's license list and config choice, as `datasets` reads them ----------------------


def test_info_shows_a_license_list(cli, tmp_path):
    src = tmp_path / "lic"
    src.mkdir()
    _write_csv(src / "train.csv", NOTES_TRAIN)
    (src / "README.md").write_text("---\nlicense:\n- mit\n- cc-by-4.0\n---\nNotes.\n")
    assert cli("import", src, "--repo", "org/lic", "--type", "dataset").exit_code == 0
    assert json.loads(cli("dataset", "info", "org/lic", "--json").output)["license"] == [
        "mit", "cc-by-4.0"]
    assert "  license: mit, cc-by-4.0\n" in cli("dataset", "info", "org/lic").output


def test_several_configs_without_a_default_need_a_choice_as_in_datasets(cli, tmp_path):
    import datasets

    src = tmp_path / "two"
    for cfg, rows in (("en", NOTES_TRAIN[:2]), ("fr", NOTES_TRAIN[2:])):
        (src / cfg).mkdir(parents=True)
        _write_csv(src / cfg / "part.csv", rows)
    (src / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files: en/*.csv\n"
        "- config_name: fr\n  data_files: fr/*.csv\n---\nTwo languages, no default.\n")
    # What datasets itself does with this card.
    with pytest.raises(ValueError, match="Config name is missing"):
        datasets.load_dataset(str(src))
    assert cli("import", src, "--repo", "org/two", "--type", "dataset").exit_code == 0
    info = json.loads(cli("dataset", "info", "org/two", "--json").output)
    assert [(c["name"], c["default"]) for c in info["configs"]] == [("en", False), ("fr", False)]
    out = cli("dataset", "info", "org/two").output
    assert "(default)" not in out
    assert "  configs: en, fr (none is the default: name one with --config)\n" in out
    r = cli("dataset", "head", "org/two")
    assert (r.exit_code, r.stderr) == (
        1, "Error: config name is missing: org/two has 2 configs and none is the default; pick "
           "one with --config: en, fr\n")
    assert [row["id"] for row in head_rows(cli, "org/two", "--config", "fr")] == [3]
