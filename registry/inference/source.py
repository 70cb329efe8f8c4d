"""Which files answer a request: a registry revision, its ONNX derived revisions, or an ad-hoc
local directory (``run ./dir``, ``serve --models NAME=./dir``).

A revision is resolved once through the registry (commit, ref or alias); derived revisions are
those with an ``Artifact`` of kind ``onnx`` whose parent is the resolved commit, or the resolved
revision itself when the user named the derived revision (``@onnx``) directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput, RepoNotFound
from ..naming import parse_spec
from ..store.views import ensure_view
from .tasks import export_tasks, model_tasks, normalize_task, task_family

BACKENDS = ("auto", "onnx", "torch")
TORCH_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
# optimum's file names for an encoder-decoder, in the order ORTModelForSeq2SeqLM takes them.
SEQ2SEQ_GRAPHS = ("encoder_model", "decoder_model", "decoder_with_past_model")


@dataclass
class OnnxExport:
    """One ONNX derived revision (or the ONNX files of an ad-hoc directory)."""

    commit: str | None
    snapshot: Path
    task: str | None  # what it was exported for (optimum's name), None when unknown
    files: dict  # precision -> path or list of paths (seq2seq: encoder, decoder, with past)
    ref: str | None = None
    warnings: dict = field(default_factory=dict)  # precision -> why its answers are suspect

    def answers(self, task: str) -> bool:
        tasks = export_tasks(self.task)
        return not tasks or task_family(task) in tasks

    def graphs(self, precision: str = "fp32") -> list[str]:
        files = self.files.get(precision)
        if files is None:
            raise InvalidInput(
                f"the ONNX export has no {precision} model (it has {', '.join(self.files)}); "
                "export one with --quantize int8"
            )
        return [files] if isinstance(files, str) else list(files)


@dataclass
class ModelSource:
    """Everything needed to load a model, resolved once."""

    name: str
    commit: str | None  # the source commit; None for an ad-hoc directory
    snapshot: Path  # a directory with config.json, tokenizer files and (maybe) PyTorch weights
    registered: bool
    pipeline_tag: str | None = None
    exports: list[OnnxExport] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.commit[:12]}" if self.commit else self.name

    @property
    def sentence_transformers(self) -> bool:
        return (self.snapshot / "modules.json").is_file()

    def tasks(self) -> list[str]:
        tasks = model_tasks(self.config, self.pipeline_tag, self.sentence_transformers)
        if not tasks:
            for export in self.exports:
                tasks += [t for t in export_tasks(export.task) if t not in tasks]
        return tasks

    def pick_task(self, requested: str | None) -> str:
        tasks = self.tasks()
        task = normalize_task(requested)
        if task is None:
            if not tasks:
                raise InvalidInput(
                    f"cannot tell which task {self.name} does (no architectures in config.json, "
                    "no pipeline tag): name one with --task"
                )
            return tasks[0]
        if task_family(task) not in tasks:
            arch = ", ".join(self.config.get("architectures") or []) or "this model"
            does = ", ".join(tasks) or "nothing modeldepot can run"
            raise InvalidInput(f"{self.name} cannot do {task}: {arch} does {does}")
        return task

    def has_torch_weights(self) -> bool:
        import fnmatch

        return any(fnmatch.fnmatch(p.name, pat) for p in self.snapshot.iterdir()
                   for pat in TORCH_WEIGHTS)

    def pick_backend(self, task: str, backend: str = "auto") -> tuple[str, OnnxExport | None]:
        if backend not in BACKENDS:
            raise InvalidInput(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
        export = next((e for e in self.exports if e.answers(task)), None)
        if backend == "onnx" or (backend == "auto" and export is not None):
            if export is None:
                hint = (f"'modeldepot onnx export {self.name}'" if self.registered
                        else "optimum-cli export onnx")
                raise InvalidInput(
                    f"{self.label} has no ONNX export for {task}; create one with {hint}, "
                    "or use --backend torch"
                )
            return "onnx", export
        if not self.has_torch_weights():
            raise InvalidInput(
                f"{self.label} has no PyTorch weights (*.safetensors, pytorch_model.bin) and no "
                f"ONNX export for {task}"
            )
        return "torch", None


def read_config(snapshot: Path) -> dict:
    try:
        data = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"config.json of {snapshot.name} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def from_directory(path: Path | str, name: str | None = None) -> ModelSource:
    """An ad-hoc model: a directory as ``save_pretrained`` (or optimum's exporter) writes it."""
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise InvalidInput(f"no such model directory: {path}")
    config = read_config(directory)
    if not config and not (directory / "tokenizer.json").is_file():
        raise InvalidInput(f"{path} is not a model directory: it has no config.json")
    exports = []
    for folder in ("onnx/", ""):
        seq2seq = [f"{folder}{g}.onnx" for g in SEQ2SEQ_GRAPHS]
        if (directory / f"{folder}model.onnx").is_file():
            exports.append(OnnxExport(None, directory, None, {"fp32": f"{folder}model.onnx"}))
        elif all((directory / g).is_file() for g in seq2seq):
            exports.append(OnnxExport(None, directory, "text2text-generation", {"fp32": seq2seq}))
        if exports:
            break
    return ModelSource(name or directory.name, None, directory, False, None, exports, config)


def is_path(spec: str) -> bool:
    """Only explicit path syntax means a directory, so 'org/name' always means a repo."""
    return spec.startswith(("/", "./", "../", "~")) or spec in (".", "..")


def from_registry(depot, spec: str) -> ModelSource:
    """Resolve ``REPO[@REV|ALIAS]`` in the registry; ONNX derived revisions come along."""
    from sqlalchemy import select

    from ..models import Artifact, Repo, Revision

    parsed = parse_spec(spec)
    with depot.db.session() as s:
        repo = s.scalar(select(Repo).where(Repo.type == "model", Repo.name == parsed.name))
        if repo is None:
            if s.scalar(select(Repo.id).where(Repo.type == "dataset", Repo.name == parsed.name)):
                raise InvalidInput(
                    f"{parsed.name} is a dataset repo; inference needs a model repo"
                )
            raise RepoNotFound(
                f"model {parsed.name!r} is not in the depot; import or pull it first "
                "(see 'modeldepot list')"
            )
        _, revision = depot.resolve_in(s, "model", parsed.name, parsed.revision)
        # Later names win: the "onnx" ref names a commit before any other alias does.
        refs = {r.commit: r.name for r in sorted(repo.refs, key=lambda r: r.name == "onnx")}
        exports: list[OnnxExport] = []
        source_commit = revision.commit
        if revision.artifact is not None and revision.artifact.kind == "onnx":
            # Asked for the derived revision itself: answer from it, with its parent for torch.
            exports.append(_export(depot, repo, revision, revision.artifact, refs))
            source_commit = revision.parent_commit or revision.commit
        else:
            rows = s.execute(
                select(Revision, Artifact)
                .join(Artifact, Artifact.revision_id == Revision.id)
                .where(Revision.repo_id == repo.id, Revision.complete.is_(True),
                       Artifact.kind == "onnx", Artifact.parent_commit == revision.commit)
                .order_by(Revision.created_at.desc())
            ).all()
            # The export the 'onnx' ref points at first, then the newest.
            rows.sort(key=lambda row: refs.get(row[0].commit) != "onnx")
            exports += [_export(depot, repo, rev, art, refs) for rev, art in rows]
        parent = s.scalar(select(Revision.id).where(
            Revision.repo_id == repo.id, Revision.commit == source_commit,
            Revision.complete.is_(True)))
        if parent is None:  # the parent was removed: the derived revision holds its files too
            source_commit = revision.commit
        snapshot = ensure_view(depot, "model", repo.name, source_commit)
        name, tag = repo.name, repo.pipeline_tag
    return ModelSource(name, source_commit, snapshot, True, tag, exports, read_config(snapshot))


def _export(depot, repo, revision, artifact, refs: dict) -> OnnxExport:
    from ..export import int8_warning

    recipe = artifact.recipe or {}
    files = recipe.get("files") or {"fp32": "onnx/model.onnx"}
    warning = int8_warning(recipe)
    return OnnxExport(revision.commit, ensure_view(depot, "model", repo.name, revision.commit),
                      recipe.get("task"), files, refs.get(revision.commit),
                      {"int8": warning} if warning else {})
