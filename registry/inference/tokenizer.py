"""A fast tokenizer without transformers: ``tokenizers`` plus the repo's tokenizer files.

``from transformers import AutoTokenizer`` imports torch (measured: about 4 s cold on this
machine), which the ONNX Runtime path must not pay. A transformers fast tokenizer is a thin layer
over the same ``tokenizers.Tokenizer`` loaded from ``tokenizer.json``; this class reproduces the
parts of that layer the encoder pipelines use (special tokens, truncation, decoding with
``clean_up_tokenization_spaces``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidInput

# transformers' PreTrainedTokenizerBase uses this as "no limit recorded".
VERY_LARGE = int(1e12)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


def clean_up_tokenization(text: str) -> str:
    """transformers' ``PreTrainedTokenizerBase.clean_up_tokenization``."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def has_fast_tokenizer(directory: Path) -> bool:
    return (Path(directory) / "tokenizer.json").is_file()


def _converted(directory: Path):
    """Without tokenizer.json, transformers converts the slow tokenizer's files (this imports
    torch, so it is the slow path; repos on the Hub almost always ship tokenizer.json)."""
    from .backends import offline_env

    offline_env()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as e:
        raise InvalidInput(f"cannot load a tokenizer from {directory.name}: {e}") from None
    if not getattr(tok, "is_fast", False):
        raise InvalidInput(f"{directory.name} has no fast tokenizer (tokenizer.json) and its "
                           "slow tokenizer cannot be converted")
    return tok.backend_tokenizer


class FastTokenizer:
    """The tokenizer of a model directory, loaded with ``tokenizers`` only."""

    def __init__(self, directory: Path | str):
        from tokenizers import Tokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if path.is_file():
            self._tk = Tokenizer.from_file(str(path))
        else:
            self._tk = _converted(directory)
        self._tk.no_truncation()
        self._tk.no_padding()
        # One tokenizer object holds its truncation settings as state: calls are serialized.
        self._lock = threading.Lock()
        config = self._read_json(directory / "tokenizer_config.json")
        special = self._read_json(directory / "special_tokens_map.json")
        limit = config.get("model_max_length")
        self.model_max_length = (
            int(limit) if isinstance(limit, (int, float)) and 0 < limit < VERY_LARGE else None
        )
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.padding_side = config.get("padding_side", "right")

        def token(name: str) -> str | None:
            return _token_text(config.get(name)) or _token_text(special.get(name))

        self.mask_token = token("mask_token")
        self.mask_token_id = self._id(self.mask_token)
        self.pad_token_id = self._id(token("pad_token"))
        self.cls_token_id = self._id(token("cls_token"))
        self.unk_token_id = self._id(token("unk_token"))
        self.has_subword_prefix = bool(getattr(self._tk.model, "continuing_subword_prefix", None))

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tk.token_to_id(token)

    def vocab(self) -> dict[str, int]:
        return self._tk.get_vocab(with_added_tokens=True)

    def encode(
        self,
        texts: Sequence,
        max_length: int | None,
        *,
        stride: int = 0,
        strategy: str = "longest_first",
    ) -> list:
        """Encode texts (or (text, pair) tuples) with truncation at ``max_length`` tokens.

        An encoding's ``overflowing`` list is non-empty when it was truncated.
        """
        with self._lock:
            if max_length:
                self._tk.enable_truncation(max_length, stride=stride, strategy=strategy)
            else:
                self._tk.no_truncation()
            try:
                return self._tk.encode_batch(list(texts), add_special_tokens=True)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:
                # The Rust error says what is wrong (e.g. a stride too large for the length);
                # some are panics, which pyo3 raises as a BaseException, not an Exception.
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InvalidInput(f"could not tokenize the input: {reason}") from None

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(int(i))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tk.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self._tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text
