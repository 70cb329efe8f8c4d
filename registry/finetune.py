"""Fine-tuning a depot model on a depot dataset, recorded as a derived revision with its recipe.

The training is transformers' ``Trainer`` (LoRA through PEFT when asked, merged back into plain
weights so that unmodified clients load the result). What this module adds is the depot's
discipline around it, as ``export.py`` does for ONNX:

* the base model and the data are read strictly from the depot (snapshot directories, offline),
  and both are named by commit in the recipe;
* everything is checked before any training (columns, labels, rows, the base's heads), so bad
  input costs one line and registers nothing;
* the training runs in a process-unique directory under ``tmp/``; only a finished, evaluated
  model is moved into the store and published, so a killed run leaves nothing visible;
* the recipe key (base and dataset commits, columns, labels, hyperparameters, seed: not timing,
  not tool versions) makes a repeated fine-tune a no-op.

The result is a revision of the target repo (new, or one that holds fine-tunes only) whose
parent is the base commit: weights, tokenizer, a config with the dataset's label names, and a
card describing the training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import select

from .depot import Depot, FileRecord, compute_commit
from .errors import Conflict, InvalidInput, RepoNotFound
from .faults import failpoint
from .importer import describe, is_lfs, scan_dir
from .models import Artifact, Ref, Repo, Revision
from .naming import validate_ref_name, validate_repo_id

RECIPE_FORMAT = 1
TASKS = ("text-classification", "token-classification")
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
DEFAULTS = {"epochs": 3, "lr": 5e-5, "batch_size": 16, "seed": 42, "max_length": 128}
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.1}
# Without an evaluation split in the data, this share of the training split is held out (by a
# shuffle seeded with the training seed, and recorded).
EVAL_FRACTION = 0.1
# The loss shown on the progress bar is the mean over this many steps.
LOGGING_STEPS = 5
EVAL_SPLITS = ("validation", "valid", "dev", "test")
VERSIONED = ("transformers", "torch", "accelerate", "peft", "datasets", "tokenizers",
             "safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "merges.txt", "vocab.json")

Progress = Callable[[dict], None]


@dataclass
class FinetunePlan:
    """Everything decided (and checked) before training: sources, data, labels, recipe, key."""

    task: str
    base: str
    base_commit: str
    base_snapshot: Path
    base_license: str | None
    dataset: str
    dataset_commit: str
    data_config: str
    split: str
    eval_split: str | None  # None: a seeded share of the training split
    text_column: str
    label_column: str
    labels: list[str]
    hyperparameters: dict
    repo: str
    ref: str
    train: dict = field(repr=False, default_factory=dict)  # {"texts": [...], "labels": [...]}
    eval: dict = field(repr=False, default_factory=dict)
    recipe_key: str = ""

    def key_inputs(self) -> dict:
        """What determines the trained bytes (library versions are recorded, not keyed)."""
        return {
            "format": RECIPE_FORMAT, "kind": "finetune", "task": self.task,
            "base": {"repo": self.base, "commit": self.base_commit},
            "dataset": {"repo": self.dataset, "commit": self.dataset_commit,
                        "config": self.data_config, "split": self.split,
                        "eval_split": self.eval_split,
                        "eval_holdout": None if self.eval_split else EVAL_FRACTION},
            "columns": {"text": self.text_column, "label": self.label_column},
            "labels": self.labels,
            "hyperparameters": self.hyperparameters,
            "trainer": "transformers.Trainer",
        }


def recipe_key(inputs: dict) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def normalize_task(task: str) -> str:
    task = TASK_ALIASES.get(task, task)
    if task not in TASKS:
        raise InvalidInput(f"cannot fine-tune for {task!r}: use one of {', '.join(TASKS)}")
    return task


def default_repo(base: str, dataset: str) -> str:
    return f"finetuned/{base.rsplit('/', 1)[-1]}-{dataset.rsplit('/', 1)[-1]}"


# -- planning: every check that can refuse, before any training ----------------------------------


def plan_finetune(
    depot: Depot,
    base: str,
    base_revision: str | None = None,
    *,
    dataset: str,
    dataset_revision: str | None = None,
    task: str = "text-classification",
    text_column: str | None = None,
    label_column: str | None = None,
    split: str | None = None,
    eval_split: str | None = None,
    epochs: int = DEFAULTS["epochs"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    seed: int = DEFAULTS["seed"],
    max_length: int = DEFAULTS["max_length"],
    lora: dict | None = None,
    repo: str | None = None,
    ref: str = "main",
) -> FinetunePlan:
    task = normalize_task(task)
    _check_hyperparameters(epochs, lr, batch_size, seed, max_length, lora)
    validate_ref_name(ref)
    repo = repo or default_repo(base, dataset)
    validate_repo_id(repo)
    text_column = text_column or ("tokens" if task == "token-classification" else "text")
    label_column = label_column or ("ner_tags" if task == "token-classification" else "label")

    base_commit, snapshot, base_license = _base_model(depot, base, base_revision, task)
    _check_target(depot, repo, ref, base)
    data = _read_data(depot, dataset, dataset_revision, task, split, eval_split, text_column,
                      label_column, seed)
    if max_length > (limit := _position_limit(snapshot)):
        raise InvalidInput(f"--max-length {max_length} is over what {base}@{base_commit[:12]} "
                           f"can take ({limit} positions)")
    hyper = {"epochs": epochs, "learning_rate": lr, "batch_size": batch_size, "seed": seed,
             "max_length": max_length, "weight_decay": 0.0, "warmup_ratio": 0.0,
             "lr_scheduler": "linear", "optimizer": "adamw_torch_fused",
             "lora": ({**LORA_DEFAULTS, **lora} if lora is not None else None)}
    plan = FinetunePlan(
        task=task, base=base, base_commit=base_commit, base_snapshot=snapshot,
        base_license=base_license, dataset=dataset, dataset_commit=data["commit"],
        data_config=data["config"], split=data["split"], eval_split=data["eval_split"],
        text_column=text_column, label_column=label_column, labels=data["labels"],
        hyperparameters=hyper, repo=repo, ref=ref, train=data["train"], eval=data["eval"],
    )
    plan.recipe_key = recipe_key(plan.key_inputs())
    return plan


def _check_hyperparameters(epochs, lr, batch_size, seed, max_length, lora) -> None:
    if not (isinstance(epochs, int) and epochs >= 1):
        raise InvalidInput("--epochs must be a whole number, 1 or more")
    if not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise InvalidInput("--lr must be a positive learning rate below 1, e.g. 5e-5")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise InvalidInput("--batch-size must be 1 or more")
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise InvalidInput("--seed must be a whole number from 0 to 4294967295")
    if not (isinstance(max_length, int) and max_length >= 8):
        raise InvalidInput("--max-length must be 8 tokens or more")
    if lora is not None and not (isinstance(lora.get("r", 8), int) and lora.get("r", 8) >= 1):
        raise InvalidInput("--lora-r must be 1 or more")


def _base_model(depot: Depot, name: str, revision: str | None, task: str):
    """The base revision's commit and snapshot, after checking it can take a ``task`` head."""
    with depot.db.session() as s:
        if not s.scalar(select(Repo.id).where(Repo.type == "model", Repo.name == name)):
            if s.scalar(select(Repo.id).where(Repo.type == "dataset", Repo.name == name)):
                raise InvalidInput(f"{name} is a dataset repo; the base of a fine-tune is a "
                                   "model (give the data with --dataset)")
            raise RepoNotFound(f"model repo {name!r} is not in the depot; add it with "
                               "'modeldepot import DIR --repo NAME' or 'modeldepot pull NAME'")
        repo, rev = depot.resolve_in(s, "model", name, revision)
        paths = [f.path for f in rev.files]
        commit, license_ = rev.commit, repo.license
    spec = f"{name}@{commit[:12]}"
    snapshot = depot.snapshot_dir("model", name, commit)
    if "config.json" not in paths or not any("/" not in p and p.endswith(WEIGHT_SUFFIXES)
                                             for p in paths):
        raise InvalidInput(f"{spec} has no transformers weights (config.json plus *.safetensors "
                           "or pytorch_model.bin) to fine-tune")
    if not any(p in TOKENIZER_FILES for p in paths):
        raise InvalidInput(f"{spec} has no tokenizer files (tokenizer.json, vocab.txt, ...); "
                           "fine-tuning needs the tokenizer the base was trained with")
    from .export import read_model_config

    config = read_model_config(snapshot, spec)
    model_type = config.get("model_type")
    heads = _head_mapping(task)
    if model_type not in heads:
        raise InvalidInput(f"cannot fine-tune {spec} for {task}: transformers has no {task} "
                           f"head for {model_type or 'unknown'} models")
    return commit, snapshot, license_


def _head_mapping(task: str) -> dict:
    from transformers.models.auto import modeling_auto

    return (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
            if task == "text-classification"
            else modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)


def _position_limit(snapshot: Path) -> int:
    try:
        config = json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError):
        return 1 << 30
    return int(config.get("max_position_embeddings") or config.get("n_positions") or 1 << 30)


def _check_target(depot: Depot, repo: str, ref: str, base: str) -> None:
    """The target is a new repo or one that holds fine-tunes only: a fine-tune never moves the
    ref of an imported or pulled model."""
    if repo == base:
        raise Conflict(f"--repo {repo} is the base model's repo; give the fine-tune a repo of "
                       "its own, e.g. --repo " + default_repo(base, "data"))
    with depot.db.session() as s:
        row = s.scalar(select(Repo).where(Repo.type == "model", Repo.name == repo))
        if row is None:
            return
        other = [r for r in row.revisions if r.complete and
                 (r.artifact is None or r.artifact.kind not in ("finetune", "onnx"))]
        if other:
            raise Conflict(f"{repo} holds revisions that are not fine-tunes (e.g. "
                           f"{other[0].commit[:12]}, {other[0].source}); pick another --repo")
        existing = s.scalar(select(Ref).where(Ref.repo_id == row.id, Ref.name == ref))
        if existing is not None and existing.kind == "tag":
            raise Conflict(f"{ref!r} is a tag of {repo}; pick another --ref")


def _read_data(depot: Depot, name: str, revision: str | None, task: str, split: str | None,
               eval_split: str | None, text_column: str, label_column: str, seed: int) -> dict:
    """The training and evaluation rows (texts and label ids) and the label names."""
    from .dataset import _check_column, _features, _reading, arrow_dataset, open_dataset

    data = open_dataset(depot, name, revision)
    cfg = data.config(None)
    split = data.split(cfg, split)
    if eval_split is not None:
        eval_split = data.split(cfg, eval_split)
        if eval_split == split:
            raise InvalidInput(f"--eval-split {eval_split} is the training split; pick another "
                               f"(splits: {', '.join(cfg.splits)}) or leave it out")
    else:
        eval_split = next((s for s in EVAL_SPLITS if s in cfg.splits and s != split), None)
    spec = f"{name}@{data.commit[:12]}"

    def load(which: str):
        with _reading(data):
            table = arrow_dataset(data, cfg, which).to_table()
        label = f"{spec} ({which})"
        for column in (text_column, label_column):
            _check_column(column, table.schema, label)
        if table.num_rows == 0:
            raise InvalidInput(f"{label} has no rows; nothing to train on")
        return table, _features(cfg, table.schema)

    train_table, features = load(split)
    _check_text(features[text_column], text_column, task, spec)
    names = _label_names(features[label_column], label_column, task, spec)
    tables = {split: train_table}
    if eval_split is not None:
        tables[eval_split] = load(eval_split)[0]
    if names is None:  # string labels: the sorted distinct values, over every split used
        values = set()
        for t in tables.values():
            for v in t.column(label_column).to_pylist():
                values.update(v if task == "token-classification" else [v])
        values.discard(None)
        names = sorted(values)
    if len(names) < 2:
        raise InvalidInput(f"label column {label_column!r} of {spec} has {len(names)} class"
                           f"{'' if len(names) == 1 else 'es'}; a classifier needs two or more")
    rows = {which: _rows(t, text_column, label_column, names, task, f"{spec} ({which})")
            for which, t in tables.items()}
    train = rows[split]
    if eval_split is None:  # a seeded hold-out, recorded in the recipe
        import random

        order = list(range(len(train["texts"])))
        random.Random(seed).shuffle(order)
        n_eval = max(1, round(len(order) * EVAL_FRACTION))
        if len(order) - n_eval < 1:
            raise InvalidInput(f"{spec} ({split}) has {len(order)} row(s): too few to hold some "
                               "out for evaluation; add rows or give --eval-split")
        pick = lambda idx: {k: [v[i] for i in sorted(idx)] for k, v in train.items()}  # noqa: E731
        evaluation, train = pick(order[:n_eval]), pick(order[n_eval:])
    else:
        evaluation = rows[eval_split]
    return {"commit": data.commit, "config": cfg.name, "split": split, "eval_split": eval_split,
            "labels": [str(n) for n in names], "train": train, "eval": evaluation}


def _inner(feature):
    """The element feature of a list-like feature (Sequence, List, LargeList), else None."""
    inner = getattr(feature, "feature", None)
    return inner if inner is not None and not isinstance(feature, dict) else None


def _check_text(feature, column: str, task: str, spec: str) -> None:
    from datasets import Value

    def is_string(f):
        return isinstance(f, Value) and f.dtype in ("string", "large_string")

    if task == "text-classification" and not is_string(feature):
        raise InvalidInput(f"text column {column!r} of {spec} holds {_describe(feature)}, not "
                           "text; name the text column with --text-column")
    if task == "token-classification" and not is_string(_inner(feature)):
        raise InvalidInput(f"text column {column!r} of {spec} holds {_describe(feature)}; "
                           "token classification needs a list of words per row (--text-column)")


def _label_names(feature, column: str, task: str, spec: str) -> list[str] | None:
    """Names from a ClassLabel, None for string labels (named by their values), else refused."""
    from datasets import ClassLabel, Value

    element = feature if task == "text-classification" else _inner(feature)
    if isinstance(element, ClassLabel):
        return list(element.names)
    if isinstance(element, Value) and element.dtype in ("string", "large_string"):
        return None
    shape = "a list of labels per row" if task == "token-classification" else "a label per row"
    raise InvalidInput(
        f"label column {column!r} of {spec} holds {_describe(feature)}, which is not "
        f"categorical: {task} needs {shape} as a ClassLabel or as strings (declare a "
        "class_label feature in the dataset card, or pick another --label-column)")


def _describe(feature) -> str:
    from datasets import Value

    if isinstance(feature, Value):
        return f"{feature.dtype} values"
    return repr(feature)


def _rows(table, text_column: str, label_column: str, names: list, task: str,
          label: str) -> dict:
    index = {n: i for i, n in enumerate(names)}
    texts = table.column(text_column).to_pylist()
    raw = table.column(label_column).to_pylist()

    def to_id(v, row: int) -> int:
        if isinstance(v, str):
            if v not in index:
                raise InvalidInput(f"{label} row {row}: label {v!r} is not one of "
                                   f"{', '.join(map(str, names))}")
            return index[v]
        if v is None or not 0 <= v < len(names):
            raise InvalidInput(f"{label} row {row}: label {v!r} is not a class id "
                               f"(0 to {len(names) - 1}) or a label name")
        return int(v)

    labels = []
    for row, (text, value) in enumerate(zip(texts, raw)):
        if task == "token-classification":
            if not text or value is None or len(text) != len(value):
                raise InvalidInput(f"{label} row {row}: {len(text or [])} words but "
                                   f"{len(value or [])} labels; each word needs one label")
            labels.append([to_id(v, row) for v in value])
        else:
            labels.append(to_id(value, row))
    texts = [t if t is not None else ([] if task == "token-classification" else "")
             for t in texts]
    return {"texts": texts, "labels": labels}


# -- the fine-tune -------------------------------------------------------------------------------


def finetune(depot: Depot, base: str, base_revision: str | None = None, *, dataset: str,
             progress: Progress | None = None, threads: int | None = None, **options) -> dict:
    """Fine-tune ``base@base_revision`` on ``dataset`` and publish it as a derived revision.

    Returns {repo, commit, ref, created, recipe_key, recipe}; with ``created`` false the same
    recipe was already trained into that repo and nothing was done (beyond pointing ``ref`` at
    it). ``threads`` sets torch's intra-op threads for the run (recorded, not keyed).
    """
    if threads is not None and threads < 1:
        raise InvalidInput("--threads must be 1 or more")
    plan = plan_finetune(depot, base, base_revision, dataset=dataset, **options)
    done = _existing(depot, plan)
    if done is not None:
        return done
    with depot.lock(f"finetune-{plan.recipe_key[:32]}"):
        done = _existing(depot, plan)
        if done is not None:
            return done
        return _finetune_locked(depot, plan, progress or (lambda _e: None), threads)


def _existing(depot: Depot, plan: FinetunePlan) -> dict | None:
    with depot.db.session() as s:
        row = s.execute(
            select(Artifact, Revision)
            .join(Revision, Revision.id == Artifact.revision_id)
            .join(Repo, Repo.id == Revision.repo_id)
            .where(Artifact.kind == "finetune", Artifact.recipe_key == plan.recipe_key,
                   Revision.complete.is_(True), Repo.type == "model", Repo.name == plan.repo)
        ).first()
        if row is None:
            return None
        artifact, rev = row
        commit, recipe = rev.commit, dict(artifact.recipe)
        files = [FileRecord(f.path, f.size, f.sha256, f.git_sha1, f.lfs, f.verification)
                 for f in rev.files]
        ref_commit = s.scalar(
            select(Ref.commit).join(Repo, Repo.id == Ref.repo_id)
            .where(Repo.type == "model", Repo.name == plan.repo, Ref.name == plan.ref))
    ref_moved = ref_commit != commit
    if ref_moved:  # asked again under a ref that points elsewhere: the ref moves, as publish does
        depot.publish(repo_type="model", name=plan.repo, commit=commit, files=files,
                      source="derived", refs=[_ref(plan.ref)], parent_commit=plan.base_commit)
    return {"repo": plan.repo, "commit": commit, "ref": plan.ref, "created": False,
            "ref_moved": ref_moved, "recipe_key": plan.recipe_key, "recipe": recipe}


def _finetune_locked(depot: Depot, plan: FinetunePlan, progress: Progress,
                     threads: int | None) -> dict:
    from .export import _quiet_offline, tool_versions

    started = time.monotonic()
    work = depot.store.tmp_path(f"finetune-{plan.repo}")
    out = work / "model"
    try:
        out.mkdir(parents=True)
        with _quiet_offline(depot.settings.debug), _torch_threads(threads) as used:
            figures = _train(plan, work, out, progress)
        (out / "README.md").write_text(model_card(plan, figures))
        progress({"stage": "storing"})
        entries = scan_dir(out)
        paths = [rel for rel, _ in entries]
        fields, meta = describe(out, paths, "model")
        fields["source"] = "local"
        files = []
        for rel, path in entries:
            d = depot.store.adopt(path, label=rel)
            files.append(FileRecord.from_digest(rel, d, lfs=is_lfs(rel, d.size)))
        recipe = {
            **plan.key_inputs(),
            "rows": {"train": len(plan.train["texts"]), "eval": len(plan.eval["texts"])},
            "metrics": figures,
            "versions": tool_versions(VERSIONED),
            "threads": used,
            "duration_s": round(time.monotonic() - started, 2),
        }
        commit = compute_commit(files, salt=f"finetune:{plan.base_commit}:{plan.recipe_key}")
        progress({"stage": "publishing"})
        derived = {"kind": "finetune", "task": plan.task,
                   "base": {"repo": plan.base, "commit": plan.base_commit},
                   "dataset": {"repo": plan.dataset, "commit": plan.dataset_commit}}
        published = depot.publish(
            repo_type="model", name=plan.repo, commit=commit, files=files, source="derived",
            refs=[_ref(plan.ref)],
            parent_commit=plan.base_commit, repo_fields=fields,
            revision_meta={**meta, "derived": derived},
            artifact={"kind": "finetune", "recipe_key": plan.recipe_key, "recipe": recipe},
            event_details={"kind": "finetune", "task": plan.task, "recipe_key": plan.recipe_key,
                           "base": f"{plan.base}@{plan.base_commit}",
                           "dataset": f"{plan.dataset}@{plan.dataset_commit}"},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"repo": plan.repo, "commit": published.commit, "ref": plan.ref,
            "created": published.created, "recipe_key": plan.recipe_key, "recipe": recipe}


def _ref(name: str) -> tuple[str, str]:
    """``main`` is the repo's branch (what clients load by default); other refs are aliases."""
    return name, "branch" if name == "main" else "alias"


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def training_arguments(plan: FinetunePlan, output_dir: Path):
    """The Trainer's arguments: everything from the recipe, nothing saved or reported."""
    from transformers import TrainingArguments

    h = plan.hyperparameters
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=h["epochs"], learning_rate=h["learning_rate"],
        per_device_train_batch_size=h["batch_size"],
        per_device_eval_batch_size=max(h["batch_size"], 32), seed=h["seed"], data_seed=h["seed"],
        weight_decay=h["weight_decay"], warmup_ratio=h["warmup_ratio"],
        lr_scheduler_type=h["lr_scheduler"], optim=h["optimizer"], report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="steps",
        logging_steps=LOGGING_STEPS, disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0,
    )


def tokenize(plan: FinetunePlan, tokenizer, rows: dict) -> list[dict]:
    """Token ids (and, for token classification, one label per word on its first sub-token;
    -100 elsewhere so the loss ignores it), unpadded: the collator pads each batch."""
    max_length = plan.hyperparameters["max_length"]
    if plan.task == "text-classification":
        enc = tokenizer(rows["texts"], truncation=True, max_length=max_length)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": rows["labels"][i]}
                for i in range(len(rows["texts"]))]
    enc = tokenizer(rows["texts"], is_split_into_words=True, truncation=True,
                    max_length=max_length)
    items = []
    for i, tags in enumerate(rows["labels"]):
        previous, labels = None, []
        for word in enc.word_ids(i):
            labels.append(-100 if word is None or word == previous else tags[word])
            previous = word
        items.append({**{k: v[i] for k, v in enc.items()}, "labels": labels})
    return items


def _train(plan: FinetunePlan, work: Path, out: Path, progress: Progress) -> dict:
    """Train, evaluate and save into ``out``; returns the figures for the recipe and card."""
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              AutoTokenizer, DataCollatorForTokenClassification,
                              DataCollatorWithPadding, PrinterCallback, Trainer,
                              TrainerCallback, set_seed)

    h = plan.hyperparameters
    progress({"stage": "loading"})
    set_seed(h["seed"])
    src = str(plan.base_snapshot)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers cannot pad batches otherwise
        if tokenizer.eos_token is None:
            raise InvalidInput(f"the tokenizer of {plan.base} has no padding token")
        tokenizer.pad_token = tokenizer.eos_token
    auto = (AutoModelForSequenceClassification if plan.task == "text-classification"
            else AutoModelForTokenClassification)
    id2label = dict(enumerate(plan.labels))
    model = auto.from_pretrained(
        src, local_files_only=True, num_labels=len(plan.labels), id2label=id2label,
        label2id={n: i for i, n in id2label.items()}, ignore_mismatched_sizes=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if h["lora"] is not None:
        model = _with_lora(model, plan)
    train_items = tokenize(plan, tokenizer, plan.train)
    eval_items = tokenize(plan, tokenizer, plan.eval)
    collator = (DataCollatorWithPadding(tokenizer) if plan.task == "text-classification"
                else DataCollatorForTokenClassification(tokenizer))

    class Report(TrainerCallback):
        loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            progress({"stage": "training", "step": state.global_step, "total": state.max_steps,
                      "epoch": state.epoch, "loss": self.loss})
            if state.global_step == 1:
                failpoint("finetune:training")

    trainer = Trainer(model=model, args=training_arguments(plan, work / "trainer"),
                      train_dataset=train_items, data_collator=collator, callbacks=[Report()])
    trainer.remove_callback(PrinterCallback)  # the loss goes to ``progress``, not stdout
    result = trainer.train()
    progress({"stage": "evaluating"})
    predicted = trainer.predict(eval_items)
    guesses = predicted.predictions.argmax(-1)
    gold = predicted.label_ids
    scored = gold != -100
    accuracy = float((guesses[scored] == gold[scored]).mean()) if scored.any() else 0.0
    figures = {
        "train_loss": round(float(result.training_loss), 6),
        "eval_loss": round(float(predicted.metrics["test_loss"]), 6),
        "eval_accuracy": round(accuracy, 6),
        "eval_rows": len(eval_items),
        "steps": int(result.global_step),
    }
    if plan.task == "text-classification":
        figures["eval_per_label"] = {
            name: round(float((guesses[gold == i] == i).mean()), 6) if (gold == i).any() else None
            for i, name in enumerate(plan.labels)}
    progress({"stage": "saving"})
    trained = trainer.model
    if h["lora"] is not None:
        trained = trained.merge_and_unload()  # plain weights: unmodified clients load them
    trained.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return figures


def _with_lora(model, plan: FinetunePlan):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = plan.hyperparameters["lora"]
    task_type = TaskType.SEQ_CLS if plan.task == "text-classification" else TaskType.TOKEN_CLS
    try:
        return get_peft_model(model, LoraConfig(task_type=task_type, r=lora["r"],
                                                lora_alpha=lora["alpha"],
                                                lora_dropout=lora["dropout"]))
    except ValueError as e:  # PEFT knows no default target modules for this architecture
        raise InvalidInput(f"LoRA cannot wrap {plan.base}: {str(e).splitlines()[0]}") from None


def model_card(plan: FinetunePlan, figures: dict) -> str:
    """README.md: Hub-style metadata, then how the model was trained (no timing: the card is
    part of the revision's bytes, which the recipe determines)."""
    import yaml

    h = plan.hyperparameters
    meta = {
        "library_name": "transformers",
        "pipeline_tag": plan.task,
        "base_model": plan.base,
        "datasets": [plan.dataset],
        "tags": ["modeldepot", "fine-tuned", plan.task] + (["lora"] if h["lora"] else []),
        "metrics": ["accuracy"],
    }
    if plan.base_license:
        meta["license"] = plan.base_license
    evaluated = (f"the `{plan.eval_split}` split" if plan.eval_split else
                 f"{figures['eval_rows']} rows held out of `{plan.split}` "
                 f"({EVAL_FRACTION:.0%}, shuffled with seed {h['seed']})")
    what = "sentence" if plan.task == "text-classification" else "word"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---",
        f"# {plan.repo}",
        "",
        f"A {plan.task} model fine-tuned by modeldepot from "
        f"`{plan.base}` at commit `{plan.base_commit}` on the dataset "
        f"`{plan.dataset}` at commit `{plan.dataset_commit}` (config `{plan.data_config}`, split "
        f"`{plan.split}`: {len(plan.train['texts'])} rows), to label each {what} as one of: "
        + ", ".join(f"`{n}`" for n in plan.labels) + ".",
        "",
        "## Evaluation",
        "",
        f"On {evaluated}: accuracy **{figures['eval_accuracy']:.4f}** "
        f"({'word-level, ' if plan.task == 'token-classification' else ''}"
        f"{figures['eval_rows']} rows), loss {figures['eval_loss']:.4f}. "
        f"Final training loss {figures['train_loss']:.4f} after {figures['steps']} steps.",
        "",
        "## Training",
        "",
        f"transformers' `Trainer`, from the text column `{plan.text_column}` and the label "
        f"column `{plan.label_column}`:",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("epochs", "learning_rate", "batch_size", "max_length", "seed", "optimizer",
                "lr_scheduler", "weight_decay", "warmup_ratio"):
        lines.append(f"| {key} | {h[key]} |")
    if h["lora"]:
        lines.append("| LoRA | r {r}, alpha {alpha}, dropout {dropout} (merged into the weights) |"
                     .format(**h["lora"]))
    lines += [
        "",
        "The full recipe (with library versions and timing) is in the depot: "
        f"`modeldepot show {plan.repo} --json`.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'classify = pipeline("{plan.task}", "{plan.repo}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def lineage_lines(recipe: dict | None) -> list[str]:
    """For ``show``: where a fine-tuned revision came from, both by commit."""
    if not recipe or recipe.get("kind") != "finetune":
        return []
    base, data = recipe["base"], recipe["dataset"]
    evaluated = data.get("eval_split") or f"{data.get('eval_holdout', EVAL_FRACTION):.0%} of {data['split']}"
    lines = [f"fine-tuned from: {base['repo']}@{base['commit']}",
             f"on dataset: {data['repo']}@{data['commit']} (trained on {data['split']}, "
             f"evaluated on {evaluated})"]
    metrics = recipe.get("metrics") or {}
    if "eval_accuracy" in metrics:
        lines.append(f"eval accuracy: {metrics['eval_accuracy']:.4f}")
    return lines
