"""Tiny models built locally (random weights, small configs, tokenizers from a small vocabulary).

Used by the tests, the benchmarks and the README's demo, since nothing may be downloaded. The
``shape`` argument gives realistic sizes for benchmarks (``bert-base``, ``minilm-l6``); timing
does not depend on the weights.

    python -m registry.samples classifier OUT_DIR [--shape tiny|minilm-l6|bert-base]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WORDS = """
the a an and or but not no yes is are was were be been being have has had do does did will would
can could should may might must shall this that these those it its i you he she we they me him her
us them my your his our their what which who whom whose when where why how all any both each few
more most other some such only own same so than too very just now then here there up down in out
on off over under again further once of at by for with about against between into through during
before after above below to from good bad great terrible awesome awful love hate like enjoy happy
sad movie film book story day night time year people man woman child world life hand part place
case week company system program question work government number point home water room mother area
money fact month lot right study eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea kid
body information back parent face others level office door health person art war history party
result change morning reason research girl guy moment air teacher force education paris france
berlin germany london england rome italy madrid spain capital city river mountain sea blue red
green yellow black white big small long short new old first last high low early late young little
""".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

SHAPES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128),
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512),
}


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def vocabulary(size: int | None = None) -> list[str]:
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(dict.fromkeys(SPECIAL + list(".,!?'-") + pieces + WORDS))
    if size and size > len(vocab):
        vocab += [f"tok{i}" for i in range(size - len(vocab))]
    return vocab


def bert_tokenizer(out: Path, vocab_size: int | None = None):
    from transformers import BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary(vocab_size)) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(out)
    return tok


def bert_model(
    out: Path | str,
    head: str = "sequence-classification",
    shape: str = "tiny",
    labels: tuple[str, ...] = ("NEGATIVE", "POSITIVE"),
    seed: int = 0,
    card: dict | None = None,
) -> Path:
    """A BERT-family model with its tokenizer, saved as ``save_pretrained`` does.

    head: sequence-classification, token-classification, question-answering, masked-lm, base.
    """
    import transformers as tf

    out = Path(out)
    _seed(seed)
    tok = bert_tokenizer(out, vocab_size=None if shape == "tiny" else 30522)
    classes = {
        "sequence-classification": tf.BertForSequenceClassification,
        "token-classification": tf.BertForTokenClassification,
        "question-answering": tf.BertForQuestionAnswering,
        "masked-lm": tf.BertForMaskedLM,
        "base": tf.BertModel,
    }
    if head == "token-classification" and labels == ("NEGATIVE", "POSITIVE"):
        labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    config = tf.BertConfig(
        vocab_size=len(tok.get_vocab()),
        id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
        pad_token_id=0,
        **SHAPES[shape],
    )
    model = classes[head](config).eval()
    model.save_pretrained(out)
    if card is not None:
        write_card(out, card)
    return out


def sentence_transformer(out: Path | str, shape: str = "tiny", seed: int = 0) -> Path:
    """A BERT encoder with the sentence-transformers files (mean pooling + normalize)."""
    out = Path(bert_model(out, head="base", shape=shape, seed=seed))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": SHAPES[shape]["hidden_size"],
        "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )
    (out / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}))
    return out


def bpe_tokenizer_files(out: Path, vocab_size: int = 300) -> None:
    """vocab.json + merges.txt of a byte-level BPE trained on the word list above."""
    from tokenizers import ByteLevelBPETokenizer

    out.mkdir(parents=True, exist_ok=True)
    trainer = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)] * 3
    trainer.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer.save_model(str(out))


def gpt2_model(out: Path | str, seed: int = 0) -> Path:
    """A GPT-2-style causal LM with a byte-level BPE tokenizer."""
    import transformers as tf

    out = Path(out)
    _seed(seed)
    bpe_tokenizer_files(out)
    tok = tf.GPT2TokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"),
                               bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok.save_pretrained(out)
    config = tf.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    model = tf.GPT2LMHeadModel(config).eval()
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return out


def bart_model(out: Path | str, seed: int = 0, task: str = "summarization") -> Path:
    """A BART-style encoder-decoder (summarization / translation) with a BPE tokenizer."""
    import transformers as tf

    out = Path(out)
    _seed(seed)
    bpe_tokenizer_files(out)
    tok = tf.BartTokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"))
    tok.save_pretrained(out)
    config = tf.BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                           forced_eos_token_id=tok.eos_token_id)
    model = tf.BartForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    model.generation_config.max_length = 20
    model.generation_config.save_pretrained(out)
    write_card(out, {"pipeline_tag": task, "library_name": "transformers", "license": "apache-2.0"})
    return out


def write_card(out: Path, data: dict, body: str = "A tiny model built for tests.") -> None:
    import yaml

    (Path(out) / "README.md").write_text(f"---\n{yaml.safe_dump(data, sort_keys=True)}---\n\n{body}\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m registry.samples", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["classifier", "ner", "qa", "fill-mask", "embedder", "gpt2", "bart"])
    p.add_argument("out")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    args = p.parse_args(argv)
    card = {"license": "apache-2.0", "tags": ["demo"]}
    if args.kind == "classifier":
        bert_model(args.out, "sequence-classification", args.shape, card=card)
    elif args.kind == "ner":
        bert_model(args.out, "token-classification", args.shape, card=card)
    elif args.kind == "qa":
        bert_model(args.out, "question-answering", args.shape, card=card)
    elif args.kind == "fill-mask":
        bert_model(args.out, "masked-lm", args.shape, card=card)
    elif args.kind == "embedder":
        sentence_transformer(args.out, args.shape)
    elif args.kind == "gpt2":
        gpt2_model(args.out)
    else:
        bart_model(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
