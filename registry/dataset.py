"""Reading dataset repos offline: which files make which splits, their columns, and their rows.

Data files are found exactly as ``datasets.load_dataset`` finds them (its own module factory runs
on the snapshot directory: the card's ``configs``/``data_files``, the ``data/`` layout, split names
from file and directory names), so ``info`` and ``head`` describe what clients will load. The
bytes are then read with pyarrow scanners straight from the depot's snapshot, streaming, so a
filter over a large split never builds a ``datasets`` cache.

``head --where`` takes a small expression language (see ``compile_where``), parsed here and
compiled to ``pyarrow.compute`` expressions; nothing the user types is ever evaluated as Python.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DepotError, InvalidInput, NotFound, RepoNotFound

# pyarrow detects these from the file name and decompresses on the fly.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4", ".br")
# Extension -> (reader, default options), as datasets maps them (packaged_modules).
FORMATS = {
    ".parquet": ("parquet", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
}
DEFAULT_HEAD_ROWS = 10

if TYPE_CHECKING:
    from .depot import Depot


@dataclass
class DataConfig:
    """One dataset config: a reader and the files of each split (paths relative to the repo)."""

    name: str
    default: bool
    module: str
    options: dict = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)
    card_features: Any = None  # datasets.Features declared in the card's dataset_info


@dataclass
class DatasetRepo:
    name: str
    commit: str
    snapshot: Path
    configs: list[DataConfig]
    sizes: dict[str, int]  # every file of the revision: path -> bytes

    def config(self, name: str | None) -> DataConfig:
        if name is None:
            # As datasets.load_dataset: the default config, else the only one, else refuse.
            chosen = next((c for c in self.configs if c.default), None)
            if chosen is None and len(self.configs) == 1:
                chosen = self.configs[0]
            if chosen is None:
                raise InvalidInput(
                    f"config name is missing: {self.name} has {len(self.configs)} configs and none "
                    f"is the default; pick one with --config: "
                    + ", ".join(c.name for c in self.configs))
            return chosen
        for c in self.configs:
            if c.name == name:
                return c
        raise NotFound(
            f"config {name!r} not found in {self.name}; configs: "
            + ", ".join(c.name for c in self.configs)
        )

    def split(self, config: DataConfig, split: str | None) -> str:
        if split is None and config.splits:
            return "train" if "train" in config.splits else next(iter(config.splits))
        if split not in config.splits:
            raise NotFound(
                f"split {split!r} not found in {self.name}"
                + (f" (config {config.name})" if len(self.configs) > 1 else "")
                + f"; splits: {', '.join(config.splits)}"
            )
        return split


# -- finding the data files -------------------------------------------------------------------


def open_dataset(depot: Depot, name: str, rev: str | None = None) -> DatasetRepo:
    """Resolve a dataset revision in the depot and discover its configs and splits."""
    try:
        resolved = depot.resolve("dataset", name, rev)
    except RepoNotFound:
        try:
            depot.resolve("model", name)
        except DepotError:
            raise RepoNotFound(
                f"dataset {name!r} is not in the depot; add it with 'modeldepot pull --type "
                f"dataset {name}' or 'modeldepot import DIR --repo {name} --type dataset'"
            ) from None
        raise RepoNotFound(
            f"{name} is a model repo, not a dataset; 'modeldepot dataset' reads datasets only "
            f"(see 'modeldepot show {name}')"
        ) from None
    from .store.views import ensure_view  # here: `modeldepot --help` must not load the store

    snapshot = ensure_view(depot, "dataset", resolved["repo"], resolved["commit"])
    return DatasetRepo(name, resolved["commit"], snapshot, discover(snapshot, label=name),
                       {f["path"]: f["size"] for f in resolved["files"]})


def discover(snapshot: Path, label: str | None = None) -> list[DataConfig]:
    """The configs of a dataset directory, by the rules ``datasets.load_dataset`` applies."""
    from datasets import DownloadConfig
    from datasets.data_files import DataFilesPatternsDict
    from datasets.exceptions import DataFilesNotFoundError
    from datasets.load import LocalDatasetModuleFactory

    label = label or str(snapshot)
    try:
        module = LocalDatasetModuleFactory(str(snapshot)).get_module()
        params = module.builder_configs_parameters
        for bc in params.builder_configs or []:
            # Configs from the card hold glob patterns until a builder resolves them.
            if isinstance(bc.data_files, DataFilesPatternsDict):
                base = str(snapshot / bc.data_dir) if bc.data_dir else str(snapshot)
                bc.data_files = bc.data_files.resolve(base, DownloadConfig())
    except (DataFilesNotFoundError, FileNotFoundError) as e:
        raise NotFound(
            f"{label} has no data files that 'datasets' can load ({_one_line(e)})"
        ) from None
    except ValueError as e:  # mixed formats across splits, bad card configs
        raise InvalidInput(f"cannot read the data layout of {label}: {_one_line(e)}") from None
    module_name = module.module_path.rsplit(".", 1)[-1]
    default_name = params.default_config_name
    roots = {str(snapshot).rstrip("/") + "/", snapshot.resolve().as_posix().rstrip("/") + "/"}
    configs = []
    for bc in params.builder_configs or []:
        splits = {
            str(split): [_relative(str(p), roots) for p in files]
            for split, files in (bc.data_files or {}).items()
        }
        options = {k: getattr(bc, k) for k in ("sep", "delimiter", "field")
                   if getattr(bc, k, None) is not None}
        info = (module.dataset_infos or {}).get(bc.name)
        configs.append(DataConfig(
            name=bc.name,
            default=bc.name == default_name or (default_name is None and len(params.builder_configs) == 1),
            module=module_name,
            options=options,
            splits=splits,
            card_features=getattr(info, "features", None),
        ))
    if not configs:
        raise NotFound(f"{label} has no data files that 'datasets' can load")
    return configs


def _card_license(card: dict) -> str | list[str] | None:
    """The card's ``license``: one identifier, or a list of them as the Hub allows."""
    value = card.get("license")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def _relative(path: str, roots: set[str]) -> str:
    path = path.split("::", 1)[0]
    if path.startswith("file://"):
        path = path[len("file://"):]
    for root in roots:
        if path.startswith(root):
            return path[len(root):]
    return path


# -- reading with pyarrow ---------------------------------------------------------------------


def _format_of(path: str) -> tuple[str, dict] | None:
    name = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    return None


def _csv_format(options: dict):
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    sep = options.get("delimiter") or options.get("sep") or ","
    # datasets reads CSV with pandas, which turns empty cells into nulls in text columns too.
    return ds.CsvFileFormat(
        parse_options=pacsv.ParseOptions(delimiter=sep),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
    )


def _is_json_lines(path: Path) -> bool:
    """JSON lines start every line with an object; a JSON document is one array or object."""
    import pyarrow as pa

    if ".jsonl" in path.name.lower():
        return True
    with pa.input_stream(str(path), compression="detect") as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith(b"{"):
        return False
    try:
        first = head.split(b"\n", 1)[0]
        json.loads(first)
        return True
    except ValueError:
        return False


def _json_document_table(path: Path, fieldname: str | None):
    import pyarrow as pa

    with pa.input_stream(str(path), compression="detect") as f:
        data = json.loads(f.read())
    if fieldname is not None:
        data = data.get(fieldname) if isinstance(data, dict) else None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return pa.Table.from_pydict(data)
    if not isinstance(data, list):
        where = f" under {fieldname!r} (the card's 'field')" if fieldname is not None else ""
        raise InvalidInput(f"{path.name} holds no list of records{where}")
    return pa.Table.from_pylist(data)


def arrow_dataset(repo: DatasetRepo, config: DataConfig, split: str):
    """A pyarrow Dataset over one split's files (lazy: nothing is read yet)."""
    import pyarrow.dataset as ds

    files = [str(repo.snapshot / p) for p in config.splits[split]]
    if config.module == "parquet":
        return ds.dataset(files, format="parquet")
    if config.module == "csv":
        return ds.dataset(files, format=_csv_format(config.options))
    if config.module == "json":
        fieldname = config.options.get("field")
        if fieldname is None and all(_is_json_lines(Path(f)) for f in files):
            return ds.dataset(files, format=ds.JsonFileFormat())
        import pyarrow as pa

        tables = [_json_document_table(Path(f), fieldname) for f in files]
        return ds.dataset(pa.concat_tables(tables, promote_options="permissive"))
    raise InvalidInput(
        f"{repo.name} holds {config.module} data; 'modeldepot dataset' reads parquet, CSV and "
        "JSON (lines) files"
    )


def _features(config: DataConfig, schema):
    from datasets import Features

    if config.card_features is not None and set(config.card_features) == set(schema.names):
        return config.card_features
    return Features.from_arrow_schema(schema)


@contextmanager
def _reading(repo: DatasetRepo):
    """Errors from the data itself (a damaged file, a type clash between files) as one line."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidInput(f"cannot read {repo.name}@{repo.commit[:12]}: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# -- info -------------------------------------------------------------------------------------


def read_description(snapshot: Path) -> tuple[dict, str]:
    """The card's YAML metadata and its text, without the front matter."""
    from .importer import read_card

    readme = snapshot / "README.md"
    if not readme.is_file():
        return {}, ""
    card, body = read_card(readme)
    return card, body.strip()


def _row_count(repo: DatasetRepo, config: DataConfig, split: str, dataset) -> int:
    if config.module == "parquet":
        import pyarrow.parquet as pq

        # The footer holds the count: no data pages are read.
        return sum(pq.ParquetFile(str(repo.snapshot / p)).metadata.num_rows
                   for p in config.splits[split])
    return dataset.count_rows()


def dataset_info(depot: Depot, name: str, rev: str | None = None) -> dict:
    """Configs, splits (files, row counts, sizes), columns and types, and the card's text."""
    repo = open_dataset(depot, name, rev)
    card, description = read_description(repo.snapshot)
    configs = []
    for config in repo.configs:
        splits, schema = [], None
        for split, paths in config.splits.items():
            with _reading(repo):
                dataset = arrow_dataset(repo, config, split)
                schema = schema or dataset.schema
                rows = _row_count(repo, config, split, dataset)
            splits.append({"name": split, "rows": rows,
                           "size": sum(repo.sizes.get(p, 0) for p in paths), "files": paths})
        features = _features(config, schema)
        configs.append({
            "name": config.name,
            "default": config.default,
            "format": config.module,
            "columns": [{"name": f.name, "type": str(f.type), "feature": repr(features[f.name])
                         if f.name in features else None} for f in schema],
            "features": features.to_dict(),
            "splits": splits,
            "rows": sum(s["rows"] for s in splits),
            "size": sum(s["size"] for s in splits),
        })
    return {
        "repo": name,
        "commit": repo.commit,
        "license": _card_license(card),
        "description": description[:2000],
        "size": sum(repo.sizes.values()),
        "configs": configs,
    }


# -- head -------------------------------------------------------------------------------------


def head(
    depot: Depot,
    name: str,
    rev: str | None = None,
    *,
    config: str | None = None,
    split: str | None = None,
    where: str | None = None,
    columns: list[str] | None = None,
    limit: int | None = DEFAULT_HEAD_ROWS,
) -> dict:
    """The first ``limit`` rows of a split (all matching rows when ``limit`` is None) whose
    values satisfy ``where``, read offline from the depot's snapshot."""
    if limit is not None and limit < 0:
        raise InvalidInput("-n must be 0 or more")
    repo = open_dataset(depot, name, rev)
    cfg = repo.config(config)
    split = repo.split(cfg, split)
    with _reading(repo):
        dataset = arrow_dataset(repo, cfg, split)
        schema = dataset.schema
    label = f"{repo.name} ({split})"
    for c in columns or []:
        _check_column(c, schema, label)
    features = _features(cfg, schema)
    expr = compile_where(where, schema, features, label) if where else None
    with _reading(repo):
        if limit is None:
            table = dataset.scanner(columns=columns, filter=expr).to_table()
        else:
            # Small batches and little readahead: with the defaults the scanner decodes most of
            # a large file before the first matches come back (measured: 0.2 s vs 0.02 s on a
            # 1M-row parquet); a filter that must scan everything is no slower.
            table = dataset.scanner(columns=columns, filter=expr, batch_size=8192,
                                    batch_readahead=4, fragment_readahead=1).head(limit)
    return {
        "repo": name,
        "commit": repo.commit,
        "config": cfg.name,
        "split": split,
        "where": where,
        "columns": table.column_names,
        "rows": table.to_pylist(),
    }


def _check_column(name: str, schema, label: str) -> None:
    if schema.get_field_index(name) < 0:
        raise InvalidInput(
            f"column {name!r} not found in {label}; columns: {', '.join(schema.names)}"
        )


# -- the --where language ---------------------------------------------------------------------

WHERE_HELP = """\
A filter over the columns of one split, e.g.:
  text contains 'good' and label == 1
  score >= 0.5 or not (lang in ('en', 'fr'))
  title is not null and title startswith 'How'
Comparisons: == (or =), !=, <, <=, >, >= against a number, a 'quoted string', true or false.
Text tests: contains, icontains (ignores case), startswith, endswith, matches (RE2 regex);
each may follow 'not'. Also: COLUMN [not] in (v1, v2, ...), COLUMN is [not] null.
Date and time columns compare with a quoted ISO date: day >= '2024-01-31'.
Combine with and, or, not and parentheses. A null value never satisfies a comparison.
Quote odd column names with backticks: `my column` == 1. Class-label columns accept the label
name: label == 'positive'."""

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.])
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<col>`[^`]+`)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|<|>|=|\(|\)|,)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false", "contains", "icontains",
             "startswith", "endswith", "matches"}
_TEXT_TESTS = {"contains", "icontains", "startswith", "endswith", "matches"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


@dataclass
class _Token:
    kind: str  # num, str, col, kw, op, end
    value: Any
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while True:
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            rest = text[pos:].strip()
            if not rest:
                break
            at = len(text) - len(text[pos:].lstrip())
            raise _syntax(text, at, f"unexpected {rest[0]!r}")
        kind = m.lastgroup
        raw = m.group(kind)
        start = m.start(kind)
        if kind == "num":
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "str":
            value = re.sub(r"\\(.)", lambda x: _ESCAPES.get(x.group(1), x.group(1)), raw[1:-1])
        elif kind == "col":
            value = raw[1:-1]
        elif kind == "word" and raw.lower() in _KEYWORDS:
            kind, value = "kw", raw.lower()
        elif kind == "word":
            kind, value = "col", raw
        else:
            value = "==" if raw == "=" else raw
        tokens.append(_Token(kind, value, start))
        pos = m.end()
    tokens.append(_Token("end", None, len(text)))
    return tokens


def _syntax(text: str, pos: int, what: str) -> InvalidInput:
    return InvalidInput(
        f"bad --where expression: {what} at character {pos + 1} of {text!r}; "
        "see 'modeldepot dataset head --help'"
    )


class _Parser:
    """Recursive descent: or > and > not > comparison; compiles as it parses."""

    def __init__(self, text: str, schema, features, label: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.schema = schema
        self.features = features
        self.label = label

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        if tok.kind == kind and (value is None or tok.value == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any, what: str) -> None:
        if not self.accept(kind, value):
            raise self.error(f"expected {what}")

    def error(self, what: str) -> InvalidInput:
        tok = self.peek()
        found = "the end" if tok.kind == "end" else repr(self.text[tok.pos:].split()[0])
        return _syntax(self.text, tok.pos, f"{what}, found {found}")

    def parse(self):
        expr = self.or_expr()
        if self.peek().kind != "end":
            raise self.error("expected 'and', 'or' or the end")
        return expr

    def or_expr(self):
        expr = self.and_expr()
        while self.accept("kw", "or"):
            expr = expr | self.and_expr()
        return expr

    def and_expr(self):
        expr = self.not_expr()
        while self.accept("kw", "and"):
            expr = expr & self.not_expr()
        return expr

    def not_expr(self):
        if self.accept("kw", "not"):
            return ~self.not_expr()
        if self.accept("op", "("):
            expr = self.or_expr()
            self.expect("op", ")", "')'")
            return expr
        return self.predicate()

    def predicate(self):
        import pyarrow.compute as pc

        tok = self.peek()
        if tok.kind != "col":
            raise self.error("expected a column name")
        self.take()
        name = tok.value
        _check_column(name, self.schema, self.label)
        col = pc.field(name)
        op = self.peek()
        if op.kind == "op" and op.value in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            value = self.literal(name)
            return {
                "==": col == value, "!=": col != value, "<": col < value,
                "<=": col <= value, ">": col > value, ">=": col >= value,
            }[op.value]
        if self.accept("kw", "is"):
            negate = self.accept("kw", "not")
            self.expect("kw", "null", "'null' after 'is'")
            return col.is_valid() if negate else col.is_null()
        negate = self.accept("kw", "not")
        nxt = self.peek()
        if nxt.kind == "kw" and nxt.value in _TEXT_TESTS:
            self.take()
            expr = self.text_test(name, nxt.value)
        elif self.accept("kw", "in"):
            expr = self.in_list(name)
        else:
            raise self.error(
                f"expected a comparison after {name!r} (==, !=, <, <=, >, >=, contains, "
                "startswith, endswith, matches, in, is null)"
            )
        return ~expr if negate else expr

    def text_test(self, name: str, test: str):
        import pyarrow.compute as pc

        tok = self.take()
        if tok.kind != "str":
            self.i -= 1
            raise self.error(f"expected a 'quoted string' after {test!r}")
        if not _is_text(self.schema.field(name).type):
            raise InvalidInput(
                f"bad --where expression: {test!r} needs a text column; {name!r} is "
                f"{self.schema.field(name).type}"
            )
        col = pc.field(name)
        if test == "matches":
            import pyarrow as pa

            try:  # RE2 checks a pattern only when it runs: run it once on an empty string
                pc.match_substring_regex(pa.array([""]), pattern=tok.value)
            except pa.ArrowInvalid as e:
                raise InvalidInput(f"bad --where expression: {_one_line(e)}") from None
            return pc.match_substring_regex(col, pattern=tok.value)
        if test == "startswith":
            return pc.starts_with(col, pattern=tok.value)
        if test == "endswith":
            return pc.ends_with(col, pattern=tok.value)
        return pc.match_substring(col, pattern=tok.value, ignore_case=test == "icontains")

    def in_list(self, name: str):
        import pyarrow as pa
        import pyarrow.compute as pc

        self.expect("op", "(", "'(' after 'in'")
        values = [self.literal(name)]
        while self.accept("op", ","):
            if self.peek().kind == "op" and self.peek().value == ")":
                break
            values.append(self.literal(name))
        self.expect("op", ")", "')' to close the list")
        col = pc.field(name)
        # A null value is neither in nor out of the list (as with ==), so 'not in' skips it too.
        return pc.if_else(col.is_valid(), pc.is_in(col, value_set=pa.array(values)),
                          pa.scalar(None, pa.bool_()))

    def literal(self, name: str):
        """The next token as a scalar of a type the column can be compared with."""
        import pyarrow as pa

        tok = self.take()
        if tok.kind == "kw" and tok.value in ("true", "false"):
            value: Any = tok.value == "true"
        elif tok.kind == "num" and isinstance(tok.value, int) and not -2**63 <= tok.value < 2**63:
            value = float(tok.value)  # Arrow has no wider integer; the comparison still holds
        elif tok.kind in ("num", "str"):
            value = tok.value
        else:
            self.i -= 1
            raise self.error("expected a number, a 'quoted string', true or false")
        typ = self.schema.field(name).type
        bad = None
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if _is_text(typ):
            if not isinstance(value, str):
                bad = f"{name!r} holds text: quote the value, e.g. {name} == '{tok.value}'"
        elif pa.types.is_boolean(typ):
            if not isinstance(value, bool):
                bad = f"{name!r} holds booleans: compare it with true or false"
        elif pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
            if isinstance(value, str):
                value = self.class_label(name, value)
            elif isinstance(value, bool):
                bad = f"{name!r} holds numbers: compare it with a number"
        elif pa.types.is_temporal(typ):
            try:
                return pa.scalar(str(value)).cast(typ)
            except (pa.ArrowException, ValueError):
                bad = f"cannot read {tok.value!r} as {typ} for {name!r}"
        else:
            bad = f"{name!r} is {typ}; only text, numbers, booleans and dates can be compared"
        if bad:
            raise InvalidInput(f"bad --where expression: {bad}")
        return value

    def class_label(self, name: str, value: str) -> int:
        from datasets import ClassLabel

        feature = self.features.get(name) if self.features is not None else None
        if isinstance(feature, ClassLabel):
            if value not in feature.names:
                raise InvalidInput(
                    f"bad --where expression: {value!r} is not a label of {name!r}; labels: "
                    + ", ".join(feature.names)
                )
            return feature.str2int(value)
        raise InvalidInput(
            f"bad --where expression: {name!r} holds numbers: compare it with a number, "
            f"not {value!r}"
        )


def _is_text(typ) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return (pa.types.is_string(typ) or pa.types.is_large_string(typ)
            or pa.types.is_string_view(typ))


def compile_where(text: str, schema, features=None, label: str = "the dataset"):
    """Parse a ``--where`` expression (see ``WHERE_HELP``) into a pyarrow.compute Expression,
    checking every column and value against ``schema``."""
    if not text or not text.strip():
        raise InvalidInput("bad --where expression: it is empty")
    return _Parser(text, schema, features, label).parse()


# -- checking data files on import ------------------------------------------------------------


def validate_data_files(src: Path, paths: list[str]) -> None:
    """Read every parquet, CSV/TSV and JSON (lines) file through; the first that does not parse
    stops the import with one line naming it."""
    import pyarrow as pa

    for rel in paths:
        fmt = _format_of(rel)
        if fmt is None:
            continue
        kind, options = fmt
        path = src / rel
        try:
            if kind == "parquet":
                _check_parquet(path)
            elif kind == "csv":
                _check_csv(path, options)
            else:
                _check_json(path)
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            what = {"parquet": "parquet", "csv": "CSV", "json": "JSON"}[kind]
            raise InvalidInput(
                f"{rel} is not a valid {what} file ({_one_line(e)}); fix or remove it and "
                "import again"
            ) from None


def _check_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    # The footer alone would pass a file whose pages are damaged: decode them all, in batches.
    with pq.ParquetFile(str(path)) as f:
        for _ in f.iter_batches(batch_size=65536):
            pass


def _check_csv(path: Path, options: dict) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter=options.get("sep", ","))
    with pacsv.open_csv(str(path), parse_options=parse) as reader:
        names = reader.schema.names
    # Read every cell as text: the shape (quoting, column counts) is what can be malformed; a
    # column that mixes numbers and words is still data that 'datasets' loads.
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
    with pacsv.open_csv(str(path), parse_options=parse, convert_options=convert) as reader:
        for _ in reader:
            pass


def _check_json(path: Path) -> None:
    import pyarrow.json as pj

    if _is_json_lines(path):
        pj.read_json(str(path))
        return
    import pyarrow as pa

    with pa.input_stream(str(path), compression="detect") as f:
        json.loads(f.read())
