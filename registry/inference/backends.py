"""Backends: ONNX Runtime and PyTorch engines for encoder tasks, pipelines for generation.

The ONNX Runtime path for encoder tasks imports neither torch nor transformers. Generation uses
the transformers pipeline, over a PyTorch model or over optimum's ORTModel classes (which need
torch anyway). Every load is from a local directory with ``local_files_only``, after setting the
HF offline variables, so nothing can reach a network.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from .encoders import MAX_CHARS_PER_TOKEN, EncoderRunner, InputError, Pooling, Result
from .source import TORCH_WEIGHTS, ModelSource, OnnxExport
from .tasks import ENCODER_TASKS, SEQ2SEQ_TASKS, task_family

AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "fill-mask": "AutoModelForMaskedLM",
    "feature-extraction": "AutoModel",
    "sentence-similarity": "AutoModel",
}
ENGINE_OUTPUTS = {"logits", "start_logits", "end_logits", "last_hidden_state", "token_embeddings"}
ENCODER_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def offline_env() -> None:
    """Before transformers / huggingface_hub are first imported: never try the network.

    Both read these variables once, at import. A process that imported them already (a test
    session, an application embedding modeldepot) keeps its setting: our loads are local paths
    with ``local_files_only`` either way, and turning a long-lived process offline would break
    its other users (a pull, say).
    """
    if "huggingface_hub" in sys.modules or "transformers" in sys.modules:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def engine_task(task: str) -> str:
    """Tasks answered by the same weights through the same model class share one load (the
    embeddings route and /models of an embedder, summarization and translation of one BART)."""
    family = task_family(task)
    if family in SEQ2SEQ_TASKS:
        return "text2text-generation"
    if family == "sentence-similarity":
        return "feature-extraction"
    return family


@functools.lru_cache(maxsize=None)
def _warm_onnxruntime() -> None:
    """Create ONNX Runtime's process-wide state with a one-node graph: the first session of a
    process costs about 12 MB more than later ones, which is the runtime's, not a model's."""
    try:
        from onnx import TensorProto, helper
    except ImportError:  # onnx is not needed to run exported graphs; then it is counted
        return
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), sess_options=options,
                         providers=["CPUExecutionProvider"])


def prepare_runtime(task: str, backend: str) -> None:
    """Pay what a backend costs once per process (imports, runtime set-up), so that a load's
    measured memory is the model's own (see ``cache.ModelCache``)."""
    if task_family(task) in ENCODER_TASKS:
        import numpy  # noqa: F401
        import tokenizers  # noqa: F401

        if backend == "onnx":
            _warm_onnxruntime()
            return
    offline_env()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    if backend == "onnx":
        import optimum.onnxruntime  # noqa: F401

        _warm_onnxruntime()


class OnnxEngine:
    """An ONNX Runtime session over numpy feeds."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        unknown = set(self.inputs) - ENCODER_INPUTS
        if unknown:
            raise InvalidInput(
                f"{path.name} takes inputs {', '.join(sorted(unknown))}, which an encoder task "
                "does not provide; re-export it for this task"
            )

    def __call__(self, feeds: dict) -> dict:
        import numpy as np

        run = {}
        for name, kind in self.inputs.items():
            value = feeds[name]
            run[name] = value.astype(np.int32) if kind == "tensor(int32)" else value
        return dict(zip(self.outputs, self.session.run(None, run)))


class TorchEngine:
    """A transformers model over numpy feeds (the same pre/post-processing as ONNX Runtime)."""

    def __init__(self, snapshot: Path, task: str):
        import inspect

        offline_env()
        import torch  # noqa: F401  (fail here, with the import error, if torch is missing)
        import transformers

        auto = getattr(transformers, AUTO_CLASSES[task_family(task)])
        self.model = auto.from_pretrained(str(snapshot), local_files_only=True).eval()
        self.accepts = set(inspect.signature(self.model.forward).parameters)

    def __call__(self, feeds: dict) -> dict:
        import torch

        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in feeds.items()
                                if k in self.accepts})
        return {k: v.float().numpy() for k, v in out.items()
                if k in ENGINE_OUTPUTS and isinstance(v, torch.Tensor)}


def sentence_pooling(snapshot: Path) -> Pooling | None:
    """The pooling and normalization sentence-transformers would apply, from ``modules.json``."""
    modules_file = snapshot / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"modules.json is not valid JSON: {e}") from None
    modes: tuple[str, ...] = ("mean",)
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            conf = _read_json(snapshot / module.get("path", "") / "config.json")
            found = tuple(mode for key, mode in POOLING_MODES.items() if conf.get(key))
            modes = found or modes
        elif kind == "Normalize":
            normalize = True
        elif kind not in ("Transformer", ""):
            raise InvalidInput(
                f"modules.json has a {kind} module, which modeldepot does not run yet; only "
                "Transformer, Pooling and Normalize are supported"
            )
    st_config = _read_json(snapshot / "sentence_bert_config.json")
    max_len = st_config.get("max_seq_length")
    return Pooling(modes, normalize, max_len if isinstance(max_len, int) else None,
                   lowercase=st_config.get("do_lower_case") is True)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def position_limit(config: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


class GenerationRunner:
    """Text generation, summarization, translation: the transformers pipeline, item by item."""

    def __init__(self, task: str, source: ModelSource, backend: str,
                 export: OnnxExport | None, precision: str):
        offline_env()
        import transformers

        self.task = task
        self.family = task_family(task)
        snapshot = str(source.snapshot)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
        self.limit = position_limit(source.config)
        self.max_chars = MAX_CHARS_PER_TOKEN * self.limit if self.limit else None
        if self.limit and self.family != "text-generation":
            # The text2text pipelines truncate to model_max_length when asked to.
            current = self.tokenizer.model_max_length or self.limit
            self.tokenizer.model_max_length = min(current, self.limit)
        causal = self.family == "text-generation"
        if backend == "torch":
            auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSeq2SeqLM
            model = auto.from_pretrained(snapshot, local_files_only=True)
            self._pipeline = functools.partial(transformers.pipeline, model=model,
                                               tokenizer=self.tokenizer)
        else:
            from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM
            from optimum.onnxruntime import pipeline as ort_pipeline

            graphs = export.graphs(precision)
            folder = export.snapshot / Path(graphs[0]).parent
            names = [Path(g).name for g in graphs]
            config = transformers.AutoConfig.from_pretrained(snapshot, local_files_only=True)
            common = dict(config=config, local_files_only=True, use_cache=True,
                          use_io_binding=False)
            if causal:
                model = ORTModelForCausalLM.from_pretrained(folder, file_name=names[0], **common)
            else:
                if len(names) != 3:
                    raise InvalidInput("a seq2seq ONNX export needs encoder, decoder and "
                                       f"decoder-with-past graphs; this one has {names}")
                model = ORTModelForSeq2SeqLM.from_pretrained(
                    folder, encoder_file_name=names[0], decoder_file_name=names[1],
                    decoder_with_past_file_name=names[2], use_merged=False, **common)
            generation = folder / "generation_config.json"
            if not generation.is_file() and (source.snapshot / "generation_config.json").is_file():
                model.generation_config = transformers.GenerationConfig.from_pretrained(
                    snapshot, local_files_only=True)
            self._pipeline = functools.partial(ort_pipeline, model=model, tokenizer=self.tokenizer)
        self.pipe = self._pipeline(task)

    def for_task(self, task: str) -> "GenerationRunner":
        """Another task of the same family of pipelines, over the same model (no second load)."""
        other = copy.copy(self)
        other.task, other.family = task, task_family(task)
        other.pipe = self._pipeline(task)
        return other

    def run(self, items: list, params: dict) -> list:
        results: list = []
        for text in items:
            try:
                results.append(self._one(text, params))
            except InvalidInput as e:
                results.append(e)
        return results

    def _one(self, text: str, params: dict) -> Result:
        kwargs = dict(params)
        cut = bool(self.max_chars) and len(text) > self.max_chars
        if cut:
            if self.family == "text-generation":
                raise InputError(
                    f"is {len(text):,} characters; this model takes at most {self.limit} tokens "
                    "of prompt and generated text together: shorten the prompt"
                )
            text = text[: self.max_chars]  # never tokenize more than truncation keeps
        n = len(self.tokenizer(text)["input_ids"])
        truncated = False
        room = self.limit
        if self.limit:
            if self.family == "text-generation":
                if n >= self.limit:
                    raise InputError(
                        f"is {n} tokens; this model takes at most {self.limit} tokens of prompt "
                        "and generated text together: shorten the prompt"
                    )
                room = self.limit - n
            elif n > self.limit:
                truncated = True
                kwargs["truncation"] = True
            # Never ask for more tokens than the model has positions (the pipeline's default
            # of 256 new tokens crashes small models instead). max_length counts the whole
            # sequence; it becomes the new tokens it leaves room for, since the pipeline's
            # default max_new_tokens would otherwise win over it (an IndexError past the last
            # position).
            max_length = kwargs.pop("max_length", None)
            if max_length is not None and "max_new_tokens" not in kwargs:
                if self.family == "text-generation":
                    if max_length <= n:
                        raise InputError(
                            f"is {n} tokens, which leaves no room under max_length "
                            f"{max_length}: raise max_length or set max_new_tokens"
                        )
                    kwargs["max_new_tokens"] = min(max_length, self.limit) - n
                else:  # the decoder's sequence starts with its start token
                    kwargs["max_new_tokens"] = max(1, min(max_length, self.limit) - 1)
            default = getattr(self.pipe.generation_config, "max_new_tokens", None) or 0
            wanted = kwargs.get("max_new_tokens", default)
            if wanted and wanted > room:
                kwargs["max_new_tokens"] = room
        try:
            output = self.pipe(text, **kwargs)
        except (ValueError, TypeError) as e:
            raise InputError(f"could not be generated from: {e}") from None
        return Result(output, truncated=truncated, tokens=n, cut=cut)


@dataclass
class LoadedModel:
    """A runner for one (source, task, backend) plus what the cache and metrics need."""

    source: ModelSource
    task: str
    backend: str
    commit: str | None  # the revision that answers (the derived one for ONNX)
    runner: Any
    size_bytes: int
    precision: str = "fp32"
    warning: str | None = None  # e.g. an int8 export forced below its validation floor
    # Views of these weights for other tasks of the same engine (see ``engine_task``).
    _views: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False,
                                compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _base: Any = field(default=None, init=False, repr=False, compare=False)

    MAX_VIEWS = 8  # translation_xx_to_yy names are open-ended

    @property
    def label(self) -> str:
        return self.source.label

    def for_task(self, task: str) -> "LoadedModel":
        """This model answering ``task`` with the same runtime objects (no second load)."""
        base = self._base or self
        if task == base.task:
            return base
        with base._lock:
            view = base._views.get(task)
            if view is None:
                view = LoadedModel(base.source, task, base.backend, base.commit,
                                   base.runner.for_task(task), base.size_bytes, base.precision)
                view._base = base
                base._views[task] = view
                while len(base._views) > base.MAX_VIEWS:
                    base._views.popitem(last=False)
            base._views.move_to_end(task)
            return view

    def run(self, items: list, params: dict) -> list:
        return self.runner.run(items, params)

    def describe(self) -> dict:
        return {"model": self.source.name, "commit": self.source.commit,
                "answered_by": self.commit, "task": self.task, "backend": self.backend,
                "precision": self.precision, "size_bytes": self.size_bytes,
                "warning": self.warning}


def _files_size(paths) -> int:
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def estimate_size(source: ModelSource, backend: str, export: OnnxExport | None,
                  precision: str) -> int:
    """Bytes of weights a load brings into memory (an estimate: runtimes add some)."""
    if backend == "onnx":
        folder = export.snapshot
        graphs = [folder / g for g in export.graphs(precision)]
        data = [p for g in graphs for p in g.parent.glob(g.name + "*") if p != g]
        return _files_size(graphs + data)
    return _files_size(p for p in source.snapshot.iterdir()
                       if any(fnmatch.fnmatch(p.name, pat) for pat in TORCH_WEIGHTS))


def load_model(source: ModelSource, task: str, backend: str = "auto", *,
               precision: str = "fp32", max_batch_tokens: int = 16384,
               threads: int | None = None) -> LoadedModel:
    """Load ``source`` for ``task`` on the chosen backend (``auto``: ONNX when exported)."""
    chosen, export = source.pick_backend(task, backend)
    if precision not in ("fp32", "int8"):
        raise InvalidInput(f"unknown precision {precision!r}: use fp32 or int8")
    if chosen == "torch" and precision != "fp32":
        raise InvalidInput("int8 needs the ONNX backend (an export made with --quantize int8)")
    size = estimate_size(source, chosen, export, precision)
    commit = export.commit if export is not None else source.commit
    warning = export.warnings.get(precision) if export is not None else None
    if task_family(task) not in ENCODER_TASKS:
        runner = GenerationRunner(task, source, chosen, export, precision)
        return LoadedModel(source, task, chosen, commit, runner, size, precision, warning)
    from .tokenizer import FastTokenizer

    tokenizer = FastTokenizer(source.snapshot)
    if chosen == "onnx":
        graphs = export.graphs(precision)
        engine = OnnxEngine(export.snapshot / graphs[0], threads=threads)
    else:
        engine = TorchEngine(source.snapshot, task)
    pooling = sentence_pooling(source.snapshot)
    runner = EncoderRunner(task, tokenizer, engine, source.config, pooling=pooling,
                           max_batch_tokens=max_batch_tokens)
    return LoadedModel(source, task, chosen, commit, runner, size, precision, warning)
