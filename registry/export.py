"""ONNX export of a depot revision, recorded as a derived revision with its recipe and lineage.

The work is optimum's: its exporter (``onnx_export_from_model``, with its ORT optimizer for
``optimize``), registry/quantize.py's int8 for encoders and ORT's dynamic int8 quantizer
(``ORTQuantizer``) for generation graphs. What this module adds is the
depot's discipline around it:

* the source is loaded strictly from the depot's snapshot directory (a local path, offline);
* everything happens in a process-unique directory under ``tmp/``;
* the result is validated before anything is registered (fp32 against PyTorch within ``atol``;
  int8 against fp32 with a floor on agreement);
* only then are the files moved into the store and the revision published, so a failed or killed
  export leaves nothing visible and ``gc`` removes the rest.

The derived revision holds the source files plus ``onnx/`` (optimum's file names), its parent is
the source commit, and its ``Artifact`` row holds the recipe. The recipe key (what was asked for,
plus the parent commit) makes a repeated export a no-op.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import select

from .depot import Depot, FileRecord, compute_commit
from .errors import Conflict, InvalidInput, RepoNotFound, ValidationFailed
from .importer import is_lfs, task_from_architectures
from .models import Artifact, Ref, Repo, Revision
from .naming import validate_ref_name
from .store.views import ensure_view
from .validation_texts import SENTENCES as VALIDATION_SENTENCES

RECIPE_FORMAT = 1
TASKS = (
    "text-classification",
    "token-classification",
    "question-answering",
    "feature-extraction",
    "fill-mask",
    "text-generation",
    "text2text-generation",
)
# Pipeline tags (and common names) that mean one of the tasks above.
TASK_ALIASES = {
    "sentence-similarity": "feature-extraction",
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "summarization": "text2text-generation",
    "translation": "text2text-generation",
}
GENERATIVE = {"text-generation": "text-generation-with-past",
              "text2text-generation": "text2text-generation-with-past"}
OPTIMIZE_LEVELS = ("O1", "O2", "O3")  # O4 is fp16 for GPUs; far slower on CPU
QUANTIZE_MODES = ("int8",)
DEFAULT_ATOL = 1e-4
# int8 must agree this well with fp32 on the validation inputs (unless forced): for embeddings
# both the mean and the minimum cosine over registry/validation_texts.py. The real
# all-MiniLM-L6-v2 measures 0.9970 / 0.9873 (O2) with registry/quantize.py (docs/onnx.md); tiny
# random models may fall short, which is what --min-agreement/--force are for.
INT8_FLOORS = {"top1_agreement": 0.99, "cosine_similarity": 0.98, "token_agreement": 0.75}
INT8_MEAN_FLOORS = {"cosine_similarity": 0.99}
TASK_METRIC = {
    "text-classification": "top1_agreement",
    "token-classification": "top1_agreement",
    "question-answering": "top1_agreement",
    "fill-mask": "top1_agreement",
    "feature-extraction": "cosine_similarity",
    "text-generation": "token_agreement",
    "text2text-generation": "token_agreement",
}
METRIC_LABELS = {"top1_agreement": "top-1 agreement", "cosine_similarity": "cosine similarity",
                 "token_agreement": "token agreement"}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Generation graphs (past key values, several graphs) keep ORT's dynamic quantizer; encoder
# graphs get registry/quantize.py (smoothed weights, calibrated static activation scales:
# accuracy on real weights, speed, and answers that do not depend on the batch).
ORT_PER_CHANNEL = False
GENERATE_TOKENS = 8
STAGES = ("loading", "exporting", "validating fp32", "quantizing", "validating int8", "storing",
          "publishing")
VERSIONED = ("optimum", "optimum-onnx", "onnx", "onnxruntime", "transformers", "torch")

# The first sentences of the shipped validation set (registry/validation_texts.py).
SAMPLE_TEXTS = VALIDATION_SENTENCES[:8]
SAMPLE_QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Who went to the city?", "She went to the city with her mother in the morning."),
    ("When will the company change its program?", "The company will change its program next year."),
    ("Where is the river?", "The river is long and the mountain near Berlin is high."),
]
SAMPLE_MASKED = [
    "Paris is the {mask} of France.",
    "I love this {mask}, it is great.",
    "She went to the {mask} with her mother.",
    "The river is long and the {mask} is high.",
]
SAMPLE_PROMPTS = ["The film was", "Paris is the capital of", "She went to the city with", "I love"]

Progress = Callable[[str], None]


@dataclass
class ExportPlan:
    """Everything decided before any work: the source, the task, the recipe and its key."""

    repo_type: str
    name: str
    parent_commit: str
    snapshot: Path
    source_files: list[dict]
    source_meta: dict
    model_type: str
    task: str
    optimum_task: str
    opset: int
    optimize: str | None
    quantize: str | None
    quantization: dict | None
    ref: str
    recipe_key: str

    def key_recipe(self) -> dict:
        return recipe_inputs(self.task, self.optimum_task, self.model_type, self.opset,
                             self.optimize, self.quantization)


def recipe_inputs(task, optimum_task, model_type, opset, optimize, quantization) -> dict:
    """What determines the exported bytes (tool versions are recorded, not keyed: an upgrade
    does not make an existing export stale)."""
    return {"format": RECIPE_FORMAT, "task": task, "optimum_task": optimum_task,
            "model_type": model_type, "opset": opset, "optimize": optimize,
            "quantization": quantization, "attn_implementation": "eager"}


def recipe_key(inputs: dict, parent_commit: str) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{canonical}\0{parent_commit}".encode()).hexdigest()


def tool_versions(dists: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def normalize_task(task: str | None) -> str | None:
    if task in (None, "", "auto"):
        return None
    return TASK_ALIASES.get(task, task)


def quant_target() -> str:
    """The ORT quantization preset for this CPU (it decides, e.g., whether weights need 7 bits)."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def quantization_inputs(quantize: str | None, task: str) -> dict | None:
    if quantize is None:
        return None
    if task in GENERATIVE:
        return {"mode": quantize, "approach": "dynamic", "target": quant_target(),
                "per_channel": ORT_PER_CHANNEL}
    from .quantize import recipe_parameters

    return {"mode": quantize, "approach": "static", **recipe_parameters(), "per_channel": True,
            "validation_texts": _validation_texts_digest()}


def _validation_texts_digest() -> str:
    """Part of the recipe key: the floors were met on exactly these texts."""
    from .validation_texts import SENTENCES

    return hashlib.sha256("\n".join(SENTENCES).encode()).hexdigest()[:16]


def int8_warning(recipe: dict | None) -> str | None:
    """The line every answer from a forced int8 export carries (None when it met its floors)."""
    int8 = ((recipe or {}).get("validation") or {}).get("int8") or {}
    if not int8.get("forced"):
        return None
    label = METRIC_LABELS.get(int8.get("metric"), int8.get("metric"))
    figures = [f"{label} {int8['value']:.4f} < floor {int8['floor']:g}"]
    if "mean" in int8 and "mean_floor" in int8:
        figures = [f"{label} min {int8['value']:.4f} (floor {int8['floor']:g}), mean "
                   f"{int8['mean']:.4f} (floor {int8['mean_floor']:g})"]
    return (f"int8 export forced below its validation floor: {figures[0]}; its answers may "
            "differ from fp32")


# -- planning (cheap: the registry, config.json, and optimum's task tables) ----------------------


def read_model_config(snapshot: Path, spec: str) -> dict:
    """A revision's config.json, or one clear line saying why it cannot be read (the
    producers of derived revisions, export and fine-tune, read it the same way)."""
    try:
        return json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{spec}: config.json cannot be read: {e}") from None


def plan_export(
    depot: Depot,
    repo_type: str,
    name: str,
    revision: str | None = None,
    *,
    task: str | None = None,
    opset: int | None = None,
    optimize: str | None = None,
    quantize: str | None = None,
    ref: str = "onnx",
) -> ExportPlan:
    validate_ref_name(ref)
    if optimize is not None and optimize not in OPTIMIZE_LEVELS:
        raise InvalidInput(f"unknown optimization level {optimize!r}: use one of "
                           f"{', '.join(OPTIMIZE_LEVELS)}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise InvalidInput(f"unknown quantization {quantize!r}: use {', '.join(QUANTIZE_MODES)}")
    if opset is not None and not 9 <= opset <= 30:
        raise InvalidInput(f"opset {opset} is out of range: use an ONNX opset such as 17 or 18")
    wanted = normalize_task(task)
    if wanted is not None and wanted not in TASKS:
        raise InvalidInput(f"task {task!r} is not supported for ONNX export: use one of "
                           f"{', '.join(TASKS)}")

    if repo_type != "model":
        raise InvalidInput(f"ONNX export works on model repos, not {repo_type} repos")
    with depot.db.session() as s:
        if not s.scalar(select(Repo.id).where(Repo.type == "model", Repo.name == name)):
            other = s.scalar(select(Repo.type).where(Repo.name == name))
            if other:
                raise InvalidInput(f"{name} is a {other} repo; ONNX export works on model repos")
            raise RepoNotFound(f"model repo {name!r} is not in the depot; see 'modeldepot list'")
        repo, rev = depot.resolve_in(s, "model", name, revision)
        if rev.artifact is not None and rev.artifact.kind == "onnx":
            raise InvalidInput(
                f"{name}@{rev.commit[:12]} is itself a derived ({rev.artifact.kind}) revision; "
                f"export its source instead: {name}@{rev.parent_commit}"
            )
        existing_ref = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == ref))
        if existing_ref is not None and existing_ref.kind != "alias":
            raise Conflict(f"{ref!r} is an upstream {existing_ref.kind} of {name}; "
                           "pick another --ref")
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1,
                  "lfs": f.lfs, "verification": f.verification} for f in rev.files]
        pipeline_tag = repo.pipeline_tag
        source_meta = dict(rev.meta or {})
        parent = rev.commit
    snapshot = ensure_view(depot, "model", name, parent)
    spec = f"{name}@{parent[:12]}"

    paths = [f["path"] for f in files]
    if "config.json" not in paths:
        raise InvalidInput(f"{spec} has no config.json; ONNX export needs a transformers model "
                           "(config.json plus weights)")
    if not any("/" not in p and any(fnmatch.fnmatch(p, w) for w in WEIGHT_PATTERNS) for p in paths):
        raise InvalidInput(f"{spec} has no PyTorch weights (*.safetensors or pytorch_model.bin); "
                           "import or pull a revision that has them")
    config = read_model_config(snapshot, spec)
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []

    supported = _supported_tasks(model_type)
    if supported is None:
        arch = architectures[0] if architectures else model_type
        raise InvalidInput(f"cannot export {spec}: architecture {arch} (model type "
                           f"{model_type!r}) is not supported by optimum's ONNX exporter")
    resolved = wanted
    if resolved is None:
        tag = normalize_task(pipeline_tag)
        resolved = tag if tag in TASKS else normalize_task(task_from_architectures(architectures))
        if resolved not in TASKS:
            raise InvalidInput(
                f"cannot infer an exportable task for {spec} (pipeline tag "
                f"{pipeline_tag or 'none'}); pass --task with one of: {', '.join(TASKS)}"
            )

    optimum_task = GENERATIVE.get(resolved, resolved)
    if optimum_task not in supported:
        usable = sorted({t.replace("-with-past", "") for t in supported} & set(TASKS))
        raise InvalidInput(f"cannot export {spec} for {resolved}: optimum exports {model_type} "
                           f"models only for {', '.join(usable) or 'no supported task'}")
    if opset is None:
        opset = _default_opset(model_type, optimum_task)
    quantization = quantization_inputs(quantize, resolved)
    key = recipe_key(recipe_inputs(resolved, optimum_task, model_type, opset, optimize,
                                   quantization), parent)
    return ExportPlan(
        repo_type="model", name=name, parent_commit=parent, snapshot=snapshot, source_files=files,
        source_meta=source_meta, model_type=model_type, task=resolved, optimum_task=optimum_task,
        opset=opset, optimize=optimize, quantize=quantize, quantization=quantization, ref=ref,
        recipe_key=key,
    )


def _supported_tasks(model_type: str | None) -> set[str] | None:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    if not model_type:
        return None
    try:
        return set(TasksManager.get_supported_tasks_for_model_type(
            model_type, "onnx", library_name="transformers"))
    except KeyError:
        return None


def _default_opset(model_type: str, optimum_task: str) -> int:
    from optimum.exporters.tasks import TasksManager

    ctor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", model_type=model_type, task=optimum_task, library_name="transformers")
    return int(getattr(ctor, "func", ctor).DEFAULT_ONNX_OPSET)


# -- the export ----------------------------------------------------------------------------------


def export_onnx(
    depot: Depot,
    repo_type: str,
    name: str,
    revision: str | None = None,
    *,
    task: str | None = None,
    opset: int | None = None,
    optimize: str | None = None,
    quantize: str | None = None,
    ref: str = "onnx",
    atol: float = DEFAULT_ATOL,
    force: bool = False,
    progress: Progress | None = None,
    min_agreement: float | None = None,
) -> dict:
    """Export ``name@revision`` to ONNX, validate it, and publish it as a derived revision.

    Returns {repo, type, commit, parent_commit, ref, created, recipe_key, recipe, files}. With
    ``created`` false the same recipe was already exported from that parent and nothing was done
    (beyond pointing ``ref`` at it). ``min_agreement`` overrides the int8 floor.
    """
    if not atol > 0:
        raise InvalidInput("--atol must be a positive number, e.g. 1e-4")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise InvalidInput("--min-agreement must be between 0 and 1")
    plan = plan_export(depot, repo_type, name, revision, task=task, opset=opset,
                       optimize=optimize, quantize=quantize, ref=ref)
    done = _existing(depot, plan)
    if done is not None:
        return done
    # One export per recipe at a time: a second identical request waits, then finds the first.
    with depot.lock(f"export-{plan.recipe_key[:32]}"):
        done = _existing(depot, plan)
        if done is not None:
            return done
        return _export_locked(depot, plan, atol=atol, force=force, progress=progress,
                              min_agreement=min_agreement)


def _existing(depot: Depot, plan: ExportPlan) -> dict | None:
    with depot.db.session() as s:
        row = s.execute(
            select(Artifact, Revision)
            .join(Revision, Revision.id == Artifact.revision_id)
            .join(Repo, Repo.id == Revision.repo_id)
            .where(Artifact.kind == "onnx", Artifact.parent_commit == plan.parent_commit,
                   Artifact.recipe_key == plan.recipe_key, Revision.complete.is_(True),
                   Repo.type == plan.repo_type, Repo.name == plan.name)
        ).first()
        if row is None:
            return None
        artifact, rev = row
        commit, recipe = rev.commit, dict(artifact.recipe)
        files = [f.path for f in rev.files if f.path.startswith("onnx/")]
        ref_commit = s.scalar(
            select(Ref.commit).join(Repo, Repo.id == Ref.repo_id)
            .where(Repo.type == plan.repo_type, Repo.name == plan.name, Ref.name == plan.ref))
    # Asking again for an export that exists, under a ref that points elsewhere, moves the ref.
    ref_moved = ref_commit != commit
    if ref_moved:
        depot.tag(plan.repo_type, plan.name, commit, plan.ref)
    return {"repo": plan.name, "type": plan.repo_type, "commit": commit,
            "parent_commit": plan.parent_commit, "ref": plan.ref, "created": False,
            "ref_moved": ref_moved, "recipe_key": plan.recipe_key, "recipe": recipe,
            "files": files}


def _export_locked(depot: Depot, plan: ExportPlan, *, atol: float, force: bool,
                   progress: Progress | None, min_agreement: float | None) -> dict:
    step = progress or (lambda _stage: None)
    started = time.monotonic()
    work = depot.store.tmp_path(f"export-{plan.name}")
    out = work / "onnx"
    with depot.writing() as lease:
        lease.hold_blobs(f["sha256"] for f in plan.source_files)  # kept through a concurrent rm
        return _store_and_publish(depot, plan, work, out, lease, atol=atol, force=force,
                                  step=step, started=started, min_agreement=min_agreement)


def _store_and_publish(depot: Depot, plan: ExportPlan, work: Path, out: Path, lease, *,
                       atol: float, force: bool, step, started: float,
                       min_agreement: float | None) -> dict:
    try:
        out.mkdir(parents=True)
        with _quiet_offline(depot.settings.debug):
            result = _build(plan, out, atol=atol, force=force, step=step,
                            min_agreement=min_agreement)
        step("storing")
        new_files = []
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            rel = "onnx/" + path.relative_to(out).as_posix()
            d = depot.store.adopt(path, label=rel, lease=lease)
            new_files.append(FileRecord.from_digest(rel, d, lfs=is_lfs(rel, d.size)))
        # The export owns onnx/: an upstream onnx/ folder in the source would mix with ours.
        kept = [FileRecord(f["path"], f["size"], f["sha256"], f["git_sha1"], f["lfs"],
                           f["verification"])
                for f in plan.source_files if not f["path"].startswith("onnx/")]
        files = kept + new_files
        recipe = {
            **plan.key_recipe(),
            "quantize": plan.quantize,
            "files": result["files"],
            "external_data": sorted(f.path for f in new_files
                                    if f.path.endswith((".onnx_data", ".onnx.data", ".data"))),
            "replaced_source_onnx_files": len(plan.source_files) - len(kept),
            "versions": tool_versions(),
            "validation": result["validation"],
            "duration_s": round(time.monotonic() - started, 2),
        }
        commit = compute_commit(files, salt=f"derived:{plan.parent_commit}:{plan.recipe_key}")
        step("publishing")
        published = depot.publish(
            repo_type=plan.repo_type, name=plan.name, commit=commit, files=files,
            source="derived", refs=[(plan.ref, "alias")], parent_commit=plan.parent_commit,
            revision_meta={**plan.source_meta, "derived": {"kind": "onnx", "task": plan.task}},
            artifact={"kind": "onnx", "recipe_key": plan.recipe_key, "recipe": recipe},
            event_details={"kind": "onnx", "task": plan.task, "recipe_key": plan.recipe_key},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"repo": plan.name, "type": plan.repo_type, "commit": published.commit,
            "parent_commit": plan.parent_commit, "ref": plan.ref, "created": published.created,
            "recipe_key": plan.recipe_key, "recipe": recipe,
            "files": [f.path for f in new_files]}


@contextmanager
def _quiet_offline(loud: bool) -> Iterator[None]:
    """Offline for anything that reads the HF variables late, and without the exporter's tracer
    warnings and log lines on the user's terminal (MODELDEPOT_DEBUG keeps them)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    disabled = logging.root.manager.disable
    try:
        with warnings.catch_warnings():
            if not loud:
                warnings.simplefilter("ignore")
                logging.disable(logging.WARNING)
            yield
    finally:
        logging.disable(disabled)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _build(plan: ExportPlan, out: Path, *, atol: float, force: bool, step: Progress,
           min_agreement: float | None) -> dict:
    """Export (and optimize, quantize) into ``out`` and validate; returns files and figures."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.exporters.tasks import TasksManager

    step("loading")
    src = str(plan.snapshot)
    tokenizer = _load_tokenizer(src)
    model = TasksManager.get_model_from_task(
        plan.optimum_task, src, framework="pt", library_name="transformers",
        local_files_only=True, attn_implementation="eager",
    ).eval()
    generative = plan.task in GENERATIVE
    # References first: the exporter's patching may touch the model's config.
    with torch.no_grad():
        if generative:
            prompts = _prompt_inputs(tokenizer, model.config, plan.task)
            reference = [_generate(model, p) for p in prompts]
        else:
            feed = _encoder_inputs(tokenizer, model.config, plan.task)
            reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()})

    step("exporting")
    try:
        onnx_export_from_model(model, out, task=plan.optimum_task, opset=plan.opset,
                               optimize=plan.optimize, do_validation=False)
    except Exception as e:  # the exporter's failures are about this model/opset/task
        raise InvalidInput(f"optimum could not export {plan.name}@{plan.parent_commit[:12]} "
                           f"for {plan.task}: {_first_line(e)}") from e
    graphs = _keep_graphs(out, plan.task)
    _record_max_length(out, plan.snapshot)
    if plan.optimize in ("O2", "O3"):
        for graph in graphs:
            if not _has_external_data(out, graph):
                _add_value_types(out / graph)

    step("validating fp32")
    if generative:
        ort_model = _load_ort_generator(out, plan.task, graphs)
        fp32_runs = [_generate(ort_model, p) for p in prompts]
        fp32 = _compare_generation(reference, fp32_runs, atol)
    else:
        fp32_outputs = _run_session(out / graphs[0], feed)
        fp32 = _compare_outputs(reference, fp32_outputs, feed, atol)
    samples = len(prompts) if generative else int(feed["input_ids"].shape[0])
    validation: dict[str, Any] = {"atol": atol, "samples": samples, "fp32": fp32}
    if not fp32["passed"]:
        worst = max(fp32["max_abs_diff"], key=fp32["max_abs_diff"].get)
        diff = fp32["max_abs_diff"][worst]
        raise ValidationFailed(
            f"fp32 ONNX output {worst!r} differs from PyTorch by up to {diff:.3g}, over the "
            f"tolerance {atol:g} ({diff / atol:.1f}x); nothing was registered. Pass --atol to "
            "accept it" + (" or try a lower --optimize level" if plan.optimize else "")
        )
    files: dict[str, Any] = {"fp32": _names(graphs)}

    if plan.quantize:
        step("quantizing")
        try:
            calibration = None if generative else _calibration_inputs(tokenizer, model.config)
            qgraphs, quantized = _quantize(out, graphs, plan.quantization, calibration)
        except Exception as e:
            raise InvalidInput(f"int8 quantization failed: {_first_line(e)}; try a lower "
                               "--optimize level with --quantize") from e
        step("validating int8")
        metric = TASK_METRIC[plan.task]
        mean = None
        if generative:
            int8_model = _load_ort_generator(out, plan.task, qgraphs)
            value = _token_agreement(fp32_runs, [_generate(int8_model, p) for p in prompts])
        else:
            int8_outputs = _run_session(out / qgraphs[0], feed)
            value, mean = _encoder_agreement(plan.task, fp32_outputs, int8_outputs, feed,
                                             plan.snapshot,
                                             getattr(tokenizer, "mask_token_id", None))
        floor = INT8_FLOORS[metric] if min_agreement is None else min_agreement
        record = {"metric": metric, "value": round(value, 6), "floor": floor}
        failures = [] if value >= floor else [(METRIC_LABELS[metric], value, floor)]
        if mean is not None:
            mean_floor = INT8_MEAN_FLOORS[metric] if min_agreement is None else min_agreement
            record.update(mean=round(mean, 6), mean_floor=mean_floor)
            if mean < mean_floor:
                failures.append((f"mean {METRIC_LABELS[metric]}", mean, mean_floor))
        passed = not failures
        validation["int8"] = {**record, "passed": passed, "forced": bool(force and not passed)}
        if quantized:
            validation["int8"]["quantized"] = quantized
        if not passed and not force:
            label, got, wanted = failures[0]
            raise ValidationFailed(
                f"int8 {label} with fp32 is {got:.6f}, below the floor "
                f"{wanted:g} by {wanted - got:.2g}; nothing was registered. Pass --force to "
                "register it anyway, or export without --quantize"
            )
        files["int8"] = _names(qgraphs)
    return {"files": files, "validation": validation}


def _record_max_length(out: Path, snapshot: Path) -> None:
    """Put the model's real input limit in onnx/tokenizer_config.json: optimum copies the base
    tokenizer's (512 for all-MiniLM-L6-v2, whose sentence-transformers config says 256), and a
    raw optimum or transformers user truncates by model_max_length alone."""
    path = out / "tokenizer_config.json"
    try:
        st_limit = json.loads((snapshot / "sentence_bert_config.json").read_text()).get(
            "max_seq_length")
        config = json.loads(path.read_text())
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(st_limit, int) or st_limit <= 0 or not isinstance(config, dict):
        return
    current = config.get("model_max_length")
    if isinstance(current, (int, float)) and 0 < current <= st_limit:
        return
    config["model_max_length"] = st_limit
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _names(graphs: list[str]) -> str | list[str]:
    names = [f"onnx/{g}" for g in graphs]
    return names[0] if len(names) == 1 else names


def _keep_graphs(out: Path, task: str) -> list[str]:
    """The graphs to ship, in the order the ORTModel classes take them.

    For encoder-decoders the separate decoder and decoder-with-past graphs are kept and the
    merged one dropped: optimum 2.1 can load a merged decoder only under its standard name, so
    the int8 variant could not be loaded by file name with past key values.
    """
    if task == "text2text-generation":
        keep = ["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"]
        for p in out.glob("decoder_model_merged.onnx*"):  # the graph and any external data
            p.unlink()
    else:
        keep = ["model.onnx"]
    missing = [g for g in keep if not (out / g).is_file()]
    if missing:
        raise InvalidInput(f"optimum's export did not produce {', '.join(missing)}")
    return keep


def _load_tokenizer(src: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=True)
    except Exception:  # no tokenizer files: validate with synthetic token ids instead
        return None


def _synthetic_ids(config, rows: int, length: int):
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = int(getattr(config, "vocab_size", 1000) or 1000)
    return rng.integers(low=min(5, vocab - 1), high=vocab, size=(rows, length), dtype=np.int64)


def _encoder_inputs(tokenizer, config, task: str) -> dict:
    """A padded numpy batch of the sample inputs for ``task``."""
    import numpy as np

    if tokenizer is None:
        ids = _synthetic_ids(config, 16, 16)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids)}
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style tokenizers cannot pad otherwise
    kwargs = dict(padding=True, truncation=True, max_length=128, return_tensors="np")
    if task == "question-answering":
        pairs = SAMPLE_QA * 2
        enc = tokenizer([q for q, _ in pairs], [c for _, c in pairs], **kwargs)
    elif task == "fill-mask" and tokenizer.mask_token:
        texts = [t.format(mask=tokenizer.mask_token) for t in SAMPLE_MASKED] * 2
        enc = tokenizer(texts, **kwargs)
    else:
        from .validation_texts import SENTENCES

        enc = tokenizer(SENTENCES, **kwargs)
    feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
    feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
    return feed


def _calibration_inputs(tokenizer, config, batch: int = 32) -> list[dict]:
    """Padded numpy batches of registry/quantize.py's calibration texts (random ids without a
    tokenizer), tokenized like the validation inputs."""
    import numpy as np

    from .quantize import calibration_texts

    if tokenizer is None:  # other ids than the validation's (_synthetic_ids draws with seed 0)
        vocab = int(getattr(config, "vocab_size", 1000) or 1000)
        ids = np.random.default_rng(1).integers(low=min(5, vocab - 1), high=vocab, size=(64, 16),
                                                dtype=np.int64)
        return [{"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.zeros_like(ids)}]
    texts = calibration_texts()
    feeds = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start:start + batch], padding=True, truncation=True,
                        max_length=128, return_tensors="np")
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
        feeds.append(feed)
    return feeds


def _run_session(path: Path, feed: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    inputs = {n: feed[n] if n in feed else np.zeros_like(feed["input_ids"]) for n in names}
    outs = sess.run(None, inputs)
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def _token_mask(value, attention_mask):
    """Broadcast the attention mask over a [batch, seq, ...] output, else None."""
    import numpy as np

    if value.ndim >= 2 and value.shape[:2] == attention_mask.shape:
        return np.broadcast_to(
            attention_mask.reshape(attention_mask.shape + (1,) * (value.ndim - 2)).astype(bool),
            value.shape)
    return None


def _compare_outputs(reference, outputs: dict, feed: dict, atol: float) -> dict:
    """Max abs difference per ONNX output against the PyTorch output of the same name, over
    the real (unpadded) tokens."""
    import numpy as np

    diffs: dict[str, float] = {}
    for name, value in outputs.items():
        if name not in reference:
            continue
        ref = reference[name].detach().numpy()
        delta = np.abs(ref.astype(np.float64) - value.astype(np.float64))
        mask = _token_mask(value, feed["attention_mask"])
        delta = delta[mask] if mask is not None else delta
        diffs[name] = float(delta.max()) if delta.size else 0.0
    if not diffs:
        raise InvalidInput("the exported graph's outputs do not match any PyTorch output name")
    return {"max_abs_diff": diffs, "passed": all(d <= atol for d in diffs.values())}


def _encoder_agreement(task: str, fp32: dict, int8: dict, feed: dict, snapshot: Path,
                       mask_id: int | None) -> tuple[float, float | None]:
    """int8 vs fp32: top-1 agreement for classifier-like heads; for feature extraction the
    minimum and the mean cosine of the pooled sentence embeddings."""
    import numpy as np

    mask = feed["attention_mask"].astype(bool)
    if task == "feature-extraction":
        a, b = (_pool(x["last_hidden_state"], feed["attention_mask"], snapshot) for x in (fp32, int8))
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        return float(cos.min()), float(cos.mean())
    if task == "text-classification":
        pairs = [(fp32["logits"].argmax(-1), int8["logits"].argmax(-1))]
    elif task == "token-classification":
        pairs = [(fp32["logits"].argmax(-1)[mask], int8["logits"].argmax(-1)[mask])]
    elif task == "question-answering":
        pairs = [(fp32[k].argmax(-1), int8[k].argmax(-1)) for k in ("start_logits", "end_logits")]
    else:  # fill-mask: the masked positions when there are any, else every real token
        masked = mask & (feed["input_ids"] == (-1 if mask_id is None else mask_id))
        where = masked if masked.any() else mask
        pairs = [(fp32["logits"].argmax(-1)[where], int8["logits"].argmax(-1)[where])]
    agree = sum(int((x == y).sum()) for x, y in pairs)
    total = sum(x.size for x, _ in pairs)
    return (agree / total if total else 1.0), None


def _pool(hidden, attention_mask, snapshot: Path):
    """The sentence embedding as sentence-transformers would pool it (mean unless 1_Pooling
    says CLS)."""
    cfg = snapshot / "1_Pooling" / "config.json"
    try:
        cls = json.loads(cfg.read_text()).get("pooling_mode_cls_token", False) if cfg.is_file() else False
    except (OSError, ValueError):
        cls = False
    if cls:
        return hidden[:, 0]
    m = attention_mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clip(min=1e-9)


def _prompt_inputs(tokenizer, config, task: str) -> list[dict]:
    """One prompt per generate call: no padding, so left/right padding conventions cannot make
    two correct implementations disagree."""
    import torch

    if tokenizer is None:
        ids = _synthetic_ids(config, len(SAMPLE_PROMPTS), 6)
        return [{"input_ids": torch.from_numpy(row[None]),
                 "attention_mask": torch.ones(1, row.size, dtype=torch.long)} for row in ids]
    texts = SAMPLE_PROMPTS if task == "text-generation" else SAMPLE_TEXTS[:4]
    return [dict(tokenizer(t, return_tensors="pt")) for t in texts]


def _generate(model, inputs: dict) -> dict:
    """Greedy decoding of exactly GENERATE_TOKENS tokens, with the raw logits of each step."""
    import torch

    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=GENERATE_TOKENS, min_new_tokens=GENERATE_TOKENS,
            do_sample=False, num_beams=1, output_logits=True, return_dict_in_generate=True,
            pad_token_id=_pad_id(model.config),
        )
    return {"tokens": out.sequences[0, -GENERATE_TOKENS:].tolist(),
            "logits": [x[0].float().numpy() for x in out.logits]}


def _pad_id(config) -> int | None:
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) else eos
    return pad


def _compare_generation(reference: list[dict], runs: list[dict], atol: float) -> dict:
    """Logits of every decoding step (the first without past key values, the rest with them),
    compared while the two decodings still share their prefix."""
    import numpy as np

    worst = 0.0
    for ref, run in zip(reference, runs):
        for i, (a, b) in enumerate(zip(ref["logits"], run["logits"])):
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
            if ref["tokens"][i] != run["tokens"][i]:
                break
    return {"max_abs_diff": {"logits": worst}, "passed": worst <= atol,
            "token_agreement": _token_agreement(reference, runs)}


def _token_agreement(a: list[dict], b: list[dict]) -> float:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra["tokens"], rb["tokens"]))
    total = sum(len(r["tokens"]) for r in a)
    return same / total if total else 1.0


def _load_ort_generator(out: Path, task: str, graphs: list[str]):
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

    common = dict(local_files_only=True, use_cache=True, use_io_binding=False)
    if task == "text-generation":
        return ORTModelForCausalLM.from_pretrained(out, file_name=graphs[0], **common)
    return ORTModelForSeq2SeqLM.from_pretrained(
        out, encoder_file_name=graphs[0], decoder_file_name=graphs[1],
        decoder_with_past_file_name=graphs[2], use_merged=False, **common)


def _quantize(out: Path, graphs: list[str], quantization: dict,
              calibration: list[dict] | None) -> tuple[list[str], dict | None]:
    """Encoder graphs: registry/quantize.py (smoothed weights, activation scales calibrated on
    ``calibration``). Generation graphs: ORT's dynamic quantizer (no calibration data)."""
    if quantization.get("method"):
        from .quantize import quantize_encoder

        done, details = [], None
        for graph in graphs:
            target = graph.replace(".onnx", "_quantized.onnx")
            details = quantize_encoder(out / graph, out / target, calibration or [],
                                       external_data=_has_external_data(out, graph))
            done.append(target)
        return done, details
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    preset = getattr(AutoQuantizationConfig, quantization["target"])
    qconfig = preset(is_static=False, per_channel=quantization["per_channel"])
    done = []
    for graph in graphs:
        big = _has_external_data(out, graph)
        quantizer = ORTQuantizer.from_pretrained(out, file_name=graph)
        quantizer.quantize(qconfig, save_dir=out, file_suffix="quantized",
                           use_external_data_format=big)
        done.append(graph.replace(".onnx", "_quantized.onnx"))
    return done, None


def _has_external_data(out: Path, graph: str) -> bool:
    return any(out.glob(graph + "?data"))  # model.onnx_data (exporter) or model.onnx.data (ORT)


def _add_value_types(path: Path) -> None:
    """Record the type of every tensor, in place: ORT's quantizer cannot infer the outputs of the
    fused contrib ops (Attention, SkipLayerNormalization, ...) that O2/O3 introduce, while ORT's
    symbolic shape inference knows them. Models with external data (over 2 GB) are left as they
    are; protobuf cannot hold them in one message."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=True)
    onnx.save(model, str(path))


# -- listing -------------------------------------------------------------------------------------


def list_exports(depot: Depot, name: str | None = None) -> list[dict]:
    """ONNX derived revisions (all, or one repo's), newest first."""
    with depot.db.session() as s:
        q = (select(Repo, Revision, Artifact)
             .join(Revision, Revision.repo_id == Repo.id)
             .join(Artifact, Artifact.revision_id == Revision.id)
             .where(Artifact.kind == "onnx", Revision.complete.is_(True))
             .order_by(Revision.created_at.desc(), Repo.name))
        if name is not None:
            depot.get_repo(s, "model", name)
            q = q.where(Repo.type == "model", Repo.name == name)
        rows = []
        for repo, rev, art in s.execute(q):
            recipe = art.recipe or {}
            validation = recipe.get("validation") or {}
            fp32 = (validation.get("fp32") or {}).get("max_abs_diff") or {}
            rows.append({
                "repo": repo.name,
                "commit": rev.commit,
                "parent_commit": art.parent_commit,
                "refs": sorted(r.name for r in repo.refs if r.commit == rev.commit),
                "task": recipe.get("task"),
                "opset": recipe.get("opset"),
                "optimize": recipe.get("optimize"),
                "quantize": recipe.get("quantize"),
                "fp32_max_abs_diff": max(fp32.values()) if fp32 else None,
                "int8": validation.get("int8"),
                "warning": int8_warning(recipe),
                "files": recipe.get("files"),
                "size": rev.size,
                "created_at": rev.created_at.strftime("%Y-%m-%dT%H:%M:%S") + "Z",
            })
        return rows
