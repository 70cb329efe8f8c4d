"""A local directory (what ``save_pretrained`` writes) -> a repo revision."""

from __future__ import annotations

import fnmatch
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .depot import Depot, FileRecord, PublishResult, compute_commit
from .errors import InvalidInput
from .faults import failpoint
from .naming import validate_ref_name, validate_repo_id, validate_repo_type
from .store import check_relpath

# The patterns of the Hub's default .gitattributes: files that upstream would keep in LFS.
LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.onnx_data",
    "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
    "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    "*.gguf", "*.data",
]
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
WEIGHT_PATTERNS = ["*.safetensors", "*.bin", "*.onnx", "*.pt", "*.pth", "*.h5", "*.msgpack",
                   "*.gguf", "*.ckpt", "*.ot", "*.tflite"]
DATA_PATTERNS = ["*.parquet", "*.csv", "*.tsv", "*.json", "*.jsonl", "*.arrow", "*.txt"]
SKIP_DIRS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}
SKIP_FILES = {".DS_Store", ".git"}  # .git as a file: a submodule's or worktree's gitdir link


def is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


# Architecture suffix -> pipeline tag, most specific first.
ARCH_TASKS = [
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("MTModel", "translation"),
    ("Model", "feature-extraction"),
]


def task_from_architectures(architectures: list[str] | None) -> str | None:
    for arch in architectures or []:
        for suffix, task in ARCH_TASKS:
            if arch.endswith(suffix):
                return task
    return None


def read_card(path: Path) -> tuple[dict, str]:
    """A model card's YAML front matter (as a dict) and its body text."""
    import yaml

    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            try:
                data = yaml.safe_load(text[3:end]) or {}
            except yaml.YAMLError:
                data = {}
            body = text[end + 4 :].lstrip("\n")
            return (data if isinstance(data, dict) else {}), body
    return {}, text


def safetensors_parameters(path: Path) -> dict[str, int]:
    """Parameter counts per dtype from a safetensors header (no tensor data is read)."""
    counts: dict[str, int] = {}
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            return counts
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 1024 * 1024:
            return counts
        header = json.loads(f.read(n))
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        total = 1
        for dim in info.get("shape", []):
            total *= dim
        counts[info.get("dtype", "?")] = counts.get(info.get("dtype", "?"), 0) + total
    return counts


def scan_dir(src: Path) -> list[tuple[str, Path]]:
    """Every file under ``src`` as (repo path, filesystem path), refusing unsafe names."""
    out = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name in SKIP_FILES:
                continue
            full = Path(root) / name
            rel = full.relative_to(src).as_posix()
            check_relpath(rel)
            if not full.is_file():
                raise InvalidInput(f"{rel} is not a regular file (broken link or device?)")
            out.append((rel, full))
    return out


def describe(src: Path, paths: list[str], repo_type: str) -> tuple[dict, dict]:
    """Repo fields and revision metadata derived from config.json, the card and the weights."""
    fields: dict = {"source": "local"}
    meta: dict = {}
    card, body = ({}, "")
    if "README.md" in paths:
        card, body = read_card(src / "README.md")
        fields["card_data"] = card or None
    tags = list(card.get("tags") or []) if isinstance(card.get("tags"), list) else []
    if isinstance(card.get("license"), str):
        fields["license"] = card["license"]
    if repo_type == "model":
        config = {}
        if "config.json" in paths:
            try:
                config = json.loads((src / "config.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InvalidInput(f"config.json is not valid JSON: {e}") from None
        architectures = config.get("architectures") or []
        meta["architectures"] = architectures
        meta["model_type"] = config.get("model_type")
        task = card.get("pipeline_tag") or task_from_architectures(architectures)
        library = card.get("library_name")
        if "modules.json" in paths or "config_sentence_transformers.json" in paths:
            library = library or "sentence-transformers"
            task = card.get("pipeline_tag") or "sentence-similarity"
        elif config:
            library = library or "transformers"
        elif any(p.endswith(".onnx") for p in paths):
            library = library or "onnx"
        fields["pipeline_tag"] = task
        fields["library_name"] = library
        params: dict[str, int] = {}
        for p in paths:
            if p.endswith(".safetensors"):
                try:
                    for dtype, n in safetensors_parameters(src / p).items():
                        params[dtype] = params.get(dtype, 0) + n
                except (OSError, ValueError, json.JSONDecodeError):
                    pass
        if params:
            meta["parameters"] = params
            meta["parameter_count"] = sum(params.values())
        for t in (library, config.get("model_type"), task, "safetensors" if params else None):
            if t and t not in tags:
                tags.append(t)
        if fields.get("license") and f"license:{fields['license']}" not in tags:
            tags.append(f"license:{fields['license']}")
        fields["meta"] = {"config": config, "architectures": architectures}
    else:
        fields["pipeline_tag"] = None
        fields["library_name"] = card.get("library_name")
        if isinstance(card.get("task_categories"), list):
            tags += [f"task_categories:{t}" for t in card["task_categories"]]
        fields["meta"] = {}
    if body:
        fields["meta"]["description"] = body[:2000]
    fields["tags"] = tags
    return fields, meta


def check_content(paths: list[str], repo_type: str, src: Path) -> None:
    names = [p.rsplit("/", 1)[-1] for p in paths]
    if repo_type == "model":
        if "config.json" not in paths and not any(
            fnmatch.fnmatch(n, pat) for n in names for pat in WEIGHT_PATTERNS
        ):
            raise InvalidInput(
                f"no model files in {src}: expected config.json or weights "
                "(*.safetensors, *.bin, *.onnx, ...), as save_pretrained writes them"
            )
    elif not any(fnmatch.fnmatch(n, pat) for n in names for pat in DATA_PATTERNS):
        raise InvalidInput(
            f"no data files in {src}: expected parquet, CSV, JSON lines or JSON files"
        )


def import_dir(
    depot: Depot,
    src: Path | str,
    name: str,
    *,
    ref: str = "main",
    repo_type: str = "model",
    progress: Callable[[int], None] | None = None,
    validate: Callable[[Path, list[str]], None] | None = None,
) -> PublishResult:
    """Register ``src`` as a revision of ``name`` and point ``ref`` at it."""
    validate_repo_type(repo_type)
    validate_repo_id(name)
    validate_ref_name(ref)
    src = Path(src)
    if not src.exists():
        raise InvalidInput(f"no such directory: {src}")
    if not src.is_dir():
        raise InvalidInput(f"not a directory: {src}")
    entries = scan_dir(src)
    paths = [rel for rel, _ in entries]
    check_content(paths, repo_type, src)
    if repo_type == "dataset":
        from .dataset import validate_data_files

        validate_data_files(src, paths)
    if validate is not None:
        validate(src, paths)
    fields, meta = describe(src, paths, repo_type)

    def ingest(entry: tuple[str, Path]) -> FileRecord:
        rel, full = entry
        d = depot.store.ingest_file(full, label=rel, lease=lease)
        if progress:
            progress(d.size)
        failpoint("import:after-file")
        return FileRecord.from_digest(rel, d, is_lfs(rel, d.size), "local")

    with depot.writing() as lease:
        with ThreadPoolExecutor(max_workers=min(4, max(1, len(entries)))) as pool:
            files = list(pool.map(ingest, entries))
        commit = compute_commit(files)
        return depot.publish(
            repo_type=repo_type,
            name=name,
            commit=commit,
            files=files,
            source="import",
            refs=[(ref, "branch")],
            repo_fields=fields,
            revision_meta=meta,
            event_details={"from": str(src.resolve())},
        )
