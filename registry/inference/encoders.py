"""Encoder tasks in numpy: tokenize, batch, run an engine, post-process like the pipeline.

An *engine* is any callable ``feeds -> outputs`` over numpy arrays (ONNX Runtime session or a
PyTorch model), so both backends share this code and give the same answers. The
post-processing follows ``transformers.pipelines`` (4.57) step by step, including its quirks,
because the promise is equality with the pipeline, not with an idea of it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInput
from .tokenizer import FastTokenizer

Engine = Callable[[dict], dict]

# Outputs with one row per token even though they are 2-D ([batch, tokens]).
TOKEN_LEVEL_2D = {"start_logits", "end_logits"}
# Models whose position ids start after the padding index (max_position_embeddings = 512 + 2).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "data2vec-text",
                    "ibert", "luke", "xlm-roberta-xl", "roberta-prelayernorm"}
# Bound the float32 logits a fill-mask batch may hold (tokens x vocabulary x 4 bytes).
FILL_MASK_LOGIT_BYTES = 256 * 1024 * 1024
# Texts are cut to this many characters per token of the model's limit before tokenizing: the
# tokenizer reads a text whole before it truncates (a 15 MB string took 13-38 s and 2 GB), and
# real text has 3-6 characters per token, so the cut only ever drops what truncation would drop
# anyway, except in texts of very long words or runs of spaces (reported as cut either way).
MAX_CHARS_PER_TOKEN = 32


class InputError(InvalidInput):
    """One input's fault, said without its position: only the caller knows where it stood in
    the request (a server batch mixes requests), so ``service.answer`` prefixes "input N"."""


@dataclass
class Result:
    """One item's answer, with what the caller should be told about it."""

    output: Any
    truncated: bool = False
    tokens: int = 0
    cut: bool = False  # a text was cut to the runner's max_chars before tokenizing


@dataclass
class Pooling:
    """How sentence embeddings are made (from sentence-transformers' modules, when present)."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    # sentence_bert_config.json's do_lower_case: sentence-transformers lowercases the text
    # before its tokenizer sees it (whatever the tokenizer itself does)
    lowercase: bool = False


def softmax(x: np.ndarray) -> np.ndarray:
    maxes = np.max(x, axis=-1, keepdims=True)
    shifted = np.exp(x - maxes)
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def encoder_limit(tokenizer: FastTokenizer, config: dict, extra: int | None = None) -> int:
    """The most tokens the model takes: tokenizer limit, position embeddings, ST max length."""
    limits = [n for n in (tokenizer.model_max_length, extra) if n]
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        if config.get("model_type") in OFFSET_POSITIONS:
            positions -= int(config.get("pad_token_id") or 1) + 1
        limits.append(positions)
    return min(limits) if limits else 512


def id2label(config: dict) -> dict[int, str]:
    raw = config.get("id2label") or {}
    return {int(k): v for k, v in raw.items()}


class EncoderRunner:
    """Runs one encoder task of one model on batches of items."""

    def __init__(
        self,
        task: str,
        tokenizer: FastTokenizer,
        engine: Engine,
        config: dict,
        *,
        pooling: Pooling | None = None,
        max_batch_tokens: int = 16384,
    ):
        self.task = task
        self.tokenizer = tokenizer
        self.engine = engine
        self.config = config
        self.pooling = pooling
        self.labels = id2label(config)
        self.max_length = encoder_limit(
            tokenizer, config, pooling.max_seq_length if pooling else None
        )
        self.max_chars = MAX_CHARS_PER_TOKEN * self.max_length
        self.max_batch_tokens = max_batch_tokens
        if task == "fill-mask":
            vocab = int(config.get("vocab_size") or len(tokenizer.vocab()))
            self.max_batch_tokens = max(1, min(max_batch_tokens, FILL_MASK_LOGIT_BYTES // (4 * vocab)))

    def for_task(self, task: str) -> "EncoderRunner":
        """The same tokenizer and engine answering another task (see ``engine_task``)."""
        other = copy.copy(self)
        other.task = task
        return other

    # -- running ---------------------------------------------------------------------------

    def run(self, items: list, params: dict) -> list:
        """One ``Result`` (or the exception for that item) per item, in order."""
        if self.task == "question-answering":
            return self._run_qa(items, params)
        items, cuts = self._cut(items)
        texts = items
        if self.pooling is not None and self.pooling.lowercase and self.task in (
                "feature-extraction", "sentence-similarity"):
            texts = [t.lower() for t in items]  # sentence_bert_config.json's do_lower_case
        encodings = self._encode(texts, self.max_length)
        good = [i for i, enc in enumerate(encodings) if not isinstance(enc, InputError)]
        outputs = dict(zip(good, self.forward([encodings[i] for i in good])))
        results: list = []
        post = getattr(self, "_post_" + self.task.replace("-", "_"))
        for i, (item, enc) in enumerate(zip(items, encodings)):
            if i not in outputs:
                results.append(enc)
                continue
            try:
                value = post(item, enc, outputs[i], params)
            except InvalidInput as e:
                results.append(e)
                continue
            results.append(Result(value, truncated=bool(enc.overflowing),
                                  tokens=len(enc.ids), cut=cuts[i]))
        return results

    def _cut(self, items: list) -> tuple[list, list[bool]]:
        """Items with each text cut to ``max_chars``, and which items were cut."""
        out, cuts = [], []
        for item in items:
            texts = (item,) if isinstance(item, str) else item
            cut = tuple(t[: self.max_chars] for t in texts)
            out.append(cut[0] if isinstance(item, str) else cut)
            cuts.append(any(len(t) > self.max_chars for t in texts))
        return out, cuts

    def _encode(self, items: list, max_length: int, **options) -> list:
        """Encodings in order; an item the tokenizer refuses gets its ``InputError`` instead,
        so one bad input in a batch fails only its own request."""
        try:
            return self.tokenizer.encode(items, max_length, **options)
        except InvalidInput:
            pass
        encodings: list = []
        for item in items:
            try:
                encodings.extend(self.tokenizer.encode([item], max_length, **options))
            except InvalidInput as e:
                reason = str(e).removeprefix("could not tokenize the input: ")
                encodings.append(InputError(f"could not be tokenized: {reason}"))
        return encodings

    def forward(self, encodings: list) -> list[dict]:
        """Run the engine over encodings, batched under the token budget; per-item outputs
        with the padding cut off again."""
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        per_item: list = [None] * len(encodings)
        chunk: list[int] = []
        for i in order:
            longest = len(encodings[i].ids)  # sorted: the newcomer is the longest
            if chunk and longest * (len(chunk) + 1) > self.max_batch_tokens:
                self._forward_chunk(encodings, chunk, per_item)
                chunk = []
            chunk.append(i)
        if chunk:
            self._forward_chunk(encodings, chunk, per_item)
        return per_item

    def _forward_chunk(self, encodings: list, chunk: list[int], per_item: list) -> None:
        lengths = [len(encodings[i].ids) for i in chunk]
        width = max(lengths)
        ids = np.full((len(chunk), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        types = np.zeros((len(chunk), width), dtype=np.int64)
        for row, i in enumerate(chunk):
            enc, n = encodings[i], lengths[row]
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        out = self.engine({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        for row, i in enumerate(chunk):
            n = lengths[row]
            item = {}
            for name, value in out.items():
                if value.ndim >= 3 or name in TOKEN_LEVEL_2D:
                    item[name] = value[row, :n]
                else:
                    item[name] = value[row]
            per_item[i] = item

    # -- text classification ---------------------------------------------------------------

    def _function(self, params: dict) -> str:
        if "function_to_apply" in params:
            return params["function_to_apply"]
        problem = self.config.get("problem_type")
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or len(self.labels) == 1:
            return "sigmoid"
        if problem == "single_label_classification" or len(self.labels) > 1:
            return "softmax"
        return self.config.get("function_to_apply") or "none"

    def _post_text_classification(self, item, enc, out, params):
        logits = out["logits"].astype(np.float32)
        fn = self._function(params)
        scores = sigmoid(logits) if fn == "sigmoid" else softmax(logits) if fn == "softmax" else logits
        if "top_k" not in params:
            return {"label": self.labels[int(scores.argmax())], "score": float(scores.max())}
        ranked = [{"label": self.labels[j], "score": float(s)} for j, s in enumerate(scores)]
        ranked.sort(key=lambda x: x["score"], reverse=True)
        top_k = params["top_k"]
        return ranked if top_k is None else ranked[:top_k]

    # -- token classification --------------------------------------------------------------

    def _post_token_classification(self, item, enc, out, params):
        strategy = params.get("aggregation_strategy", "simple")
        ignore = params.get("ignore_labels", ["O"])
        scores = softmax(out["logits"].astype(np.float32))
        pre = self._pre_entities(item, enc, scores)
        if strategy in ("none", "simple"):
            entities = [
                {"entity": self.labels[int(p["scores"].argmax())],
                 "score": p["scores"][int(p["scores"].argmax())], "index": p["index"],
                 "word": p["word"], "start": p["start"], "end": p["end"]}
                for p in pre
            ]
        else:
            entities = self._aggregate_words(pre, strategy)
        if strategy != "none":
            entities = self._group_entities(entities)
        kept = [e for e in entities
                if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
        for e in kept:
            e["score"] = float(e["score"])
        return kept

    def _pre_entities(self, sentence: str, enc, scores: np.ndarray) -> list[dict]:
        tok = self.tokenizer
        pre = []
        for idx, token_scores in enumerate(scores):
            if enc.special_tokens_mask[idx]:
                continue
            token_id = enc.ids[idx]
            word = tok.id_to_token(token_id)
            start, end = enc.offsets[idx]
            word_ref = sentence[start:end]
            if tok.has_subword_prefix:
                is_subword = len(word) != len(word_ref)
            else:
                is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
            if token_id == tok.unk_token_id:
                word = word_ref
                is_subword = False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end,
                        "index": idx, "is_subword": is_subword})
        return pre

    def _aggregate_word(self, group: list[dict], strategy: str) -> dict:
        word = self.tokenizer.convert_tokens_to_string([e["word"] for e in group])
        if strategy == "first":
            scores = group[0]["scores"]
        elif strategy == "max":
            scores = max(group, key=lambda e: e["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([e["scores"] for e in group]), axis=0)
        idx = int(scores.argmax())
        return {"entity": self.labels[idx], "score": scores[idx], "word": word,
                "start": group[0]["start"], "end": group[-1]["end"]}

    def _aggregate_words(self, pre: list[dict], strategy: str) -> list[dict]:
        words, group = [], None
        for entity in pre:
            if group is None:
                group = [entity]
            elif entity["is_subword"]:
                group.append(entity)
            else:
                words.append(self._aggregate_word(group, strategy))
                group = [entity]
        if group is not None:
            words.append(self._aggregate_word(group, strategy))
        return words

    @staticmethod
    def _tag(name: str) -> tuple[str, str]:
        if name.startswith("B-"):
            return "B", name[2:]
        if name.startswith("I-"):
            return "I", name[2:]
        return "I", name

    def _group(self, entities: list[dict]) -> dict:
        return {
            "entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": np.mean(np.nanmean([e["score"] for e in entities])),
            "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _group_entities(self, entities: list[dict]) -> list[dict]:
        groups, current = [], []
        for entity in entities:
            if not current:
                current.append(entity)
                continue
            bi, tag = self._tag(entity["entity"])
            _, last_tag = self._tag(current[-1]["entity"])
            if tag == last_tag and bi != "B":
                current.append(entity)
            else:
                groups.append(self._group(current))
                current = [entity]
        if current:
            groups.append(self._group(current))
        return groups

    # -- fill-mask -------------------------------------------------------------------------

    def _target_ids(self, targets: list[str]) -> np.ndarray:
        vocab = self.tokenizer.vocab()
        ids = []
        for target in targets:
            token_id = vocab.get(target)
            if token_id is None:
                enc = self.tokenizer._tk.encode(target, add_special_tokens=False)
                if not enc.ids:
                    continue
                token_id = enc.ids[0]
            ids.append(token_id)
        if not ids:
            raise InvalidInput("none of the 'targets' is in the model's vocabulary")
        return np.array(list(set(ids)))

    def _post_fill_mask(self, item, enc, out, params):
        tok = self.tokenizer
        if tok.mask_token_id is None:
            raise InvalidInput("this model's tokenizer has no mask token; it cannot do fill-mask")
        input_ids = np.array(enc.ids)
        masked = np.nonzero(input_ids == tok.mask_token_id)[0]
        if masked.size == 0:
            raise InputError(
                f"has no {tok.mask_token} token: put {tok.mask_token} where the missing word goes"
            )
        top_k = params.get("top_k", 5)
        target_ids = self._target_ids(params["targets"]) if "targets" in params else None
        probs = softmax(out["logits"][masked].astype(np.float32))
        if target_ids is not None:
            probs = probs[..., target_ids]
            top_k = min(top_k, target_ids.shape[0])
        single = masked.size == 1
        rows = []
        for m, row_probs in enumerate(probs):
            best = np.argsort(-row_probs, kind="stable")[:top_k]
            row = []
            for p in best:
                token = int(target_ids[p]) if target_ids is not None else int(p)
                tokens = input_ids.copy()
                tokens[masked[m]] = token
                tokens = tokens[np.where(tokens != tok.pad_token_id)]
                row.append({"score": float(row_probs[p]), "token": token,
                            "token_str": tok.decode([token]),
                            "sequence": tok.decode(tokens.tolist(), skip_special_tokens=single)})
            rows.append(row)
        return rows[0] if single else rows

    # -- feature extraction and sentence similarity ----------------------------------------

    def _pool(self, tokens: np.ndarray, modes: tuple[str, ...], normalize: bool) -> list[float]:
        tokens = tokens.astype(np.float32)
        n = tokens.shape[0]
        parts = []
        for mode in modes:
            if mode == "cls":
                parts.append(tokens[0])
            elif mode == "max":
                parts.append(tokens.max(axis=0))
            elif mode == "mean":
                parts.append(tokens.sum(axis=0) / n)
            elif mode == "mean_sqrt_len":
                parts.append(tokens.sum(axis=0) / math.sqrt(n))
            elif mode == "weightedmean":
                weights = np.arange(1, n + 1, dtype=np.float32)[:, None]
                parts.append((tokens * weights).sum(axis=0) / weights.sum())
            elif mode == "lasttoken":
                parts.append(tokens[-1])
        vector = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return vector.tolist()

    @staticmethod
    def _token_embeddings(out: dict) -> np.ndarray:
        for name in ("token_embeddings", "last_hidden_state"):
            if name in out:
                return out[name]
        raise InvalidInput("this model gives no token embeddings; it cannot do feature-extraction")

    def _post_feature_extraction(self, item, enc, out, params):
        tokens = self._token_embeddings(out)
        default_modes = self.pooling.modes if self.pooling else None
        pooling = params.get("pooling")
        modes = default_modes if pooling is None else (None if pooling == "none" else (pooling,))
        if modes is None:
            return [tokens.astype(np.float32).tolist()]  # the pipeline's [1, tokens, hidden]
        normalize = params.get("normalize", self.pooling.normalize if self.pooling else False)
        return self._pool(tokens, modes, normalize)

    def _post_sentence_similarity(self, item, enc, out, params):
        modes = self.pooling.modes if self.pooling else ("mean",)
        return self._pool(self._token_embeddings(out), modes, True)

    # -- question answering ----------------------------------------------------------------

    def _run_qa(self, items: list, params: dict) -> list:
        tok = self.tokenizer
        max_seq_len = params.get("max_seq_len") or min(self.max_length, 384)
        max_seq_len = min(max_seq_len, self.max_length)
        doc_stride = params.get("doc_stride") or min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise InvalidInput(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        question_first = tok.padding_side == "right"
        items, cuts = self._cut(items)
        pairs = [(q, c) if question_first else (c, q) for q, c in items]
        encodings = self._encode(
            pairs, max_seq_len, stride=doc_stride,
            strategy="only_second" if question_first else "only_first",
        )
        spans, owner = [], []
        for i, enc in enumerate(encodings):
            if isinstance(enc, InputError):
                continue
            for span in [enc] + list(enc.overflowing):
                spans.append(span)
                owner.append(i)
        outputs = self.forward(spans)
        per_item: list[list] = [[] for _ in items]
        for span, out, i in zip(spans, outputs, owner):
            per_item[i].append((span, out))
        results: list = []
        for (question, context), span_outputs, enc, cut in zip(items, per_item, encodings, cuts):
            if isinstance(enc, InputError):
                results.append(enc)
                continue
            value = self._qa_answers(context, span_outputs, params, question_first)
            tokens = sum(len(span.ids) for span, _ in span_outputs)
            results.append(Result(value, tokens=tokens, cut=cut))
        return results

    def _qa_answers(self, context: str, span_outputs: list, params: dict, question_first: bool):
        top_k = params.get("top_k", 1)
        handle_impossible = params.get("handle_impossible_answer", False)
        max_answer_len = params.get("max_answer_len", 15)
        align_to_words = params.get("align_to_words", True)
        min_null_score = 1000000
        answers: list[dict] = []
        for span, out in span_outputs:
            sequence_ids = span.sequence_ids
            p_mask = [(s != 1) if question_first else 0 for s in sequence_ids]
            if self.tokenizer.cls_token_id is not None:
                for idx in np.nonzero(np.array(span.ids) == self.tokenizer.cls_token_id)[0]:
                    p_mask[idx] = 0
            attention = np.ones((1, len(span.ids)), dtype=np.int64)
            pre_topk = top_k * 2 + 10 if align_to_words else top_k
            starts, ends, scores, min_null_score = select_starts_ends(
                out["start_logits"][None].astype(np.float32),
                out["end_logits"][None].astype(np.float32),
                p_mask, attention, min_null_score, pre_topk, handle_impossible, max_answer_len,
            )
            sequence_index = 1 if question_first else 0
            for s, e, score in zip(starts, ends, scores):
                start_index, end_index = _qa_indices(span, int(s), int(e), sequence_index,
                                                     align_to_words)
                target = context[start_index:end_index]
                same = next((a for a in answers if a["answer"].lower() == target.lower()), None)
                if same:
                    same["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": start_index,
                                    "end": end_index, "answer": target})
        if handle_impossible:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers


def _qa_indices(enc, s: int, e: int, sequence_index: int, align_to_words: bool) -> tuple[int, int]:
    if align_to_words:
        try:
            start_word = enc.token_to_word(s)
            end_word = enc.token_to_word(e)
            return (enc.word_to_chars(start_word, sequence_index=sequence_index)[0],
                    enc.word_to_chars(end_word, sequence_index=sequence_index)[1])
        except Exception:  # the pipeline falls back to token offsets the same way
            pass
    return enc.offsets[s][0], enc.offsets[e][1]


def decode_spans(start, end, topk, max_answer_len, undesired_tokens):
    """transformers.pipelines.question_answering.decode_spans."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = [np.argmax(scores_flat)]
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    desired = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts = starts[desired]
    ends = ends[desired]
    scores = candidates[0, starts, ends]
    return starts, ends, scores


def select_starts_ends(start, end, p_mask, attention_mask, min_null_score=1000000, top_k=1,
                       handle_impossible_answer=False, max_answer_len=15):
    """transformers.pipelines.question_answering.select_starts_ends."""
    undesired_tokens = np.abs(np.array(p_mask) - 1)
    if attention_mask is not None:
        undesired_tokens = undesired_tokens & attention_mask
    undesired_mask = undesired_tokens == 0.0
    start = np.where(undesired_mask, -10000.0, start)
    end = np.where(undesired_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, undesired_tokens)
    return starts, ends, scores, min_null_score
