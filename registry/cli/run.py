"""`modeldepot run`: answer from the depot's artifacts, offline, in this process."""

from __future__ import annotations

import json
import sys

import click

from ._common import emit_json, json_option, pass_app


def _param(ctx, _param, values):
    """KEY=VALUE pairs; a VALUE that parses as JSON is taken as JSON (numbers, true, null)."""
    params = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{raw!r}: use KEY=VALUE, e.g. top_k=3", ctx=ctx)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@click.command("run")
@click.argument("repo", metavar="REPO[@REV|ALIAS]|PATH")
@click.argument("texts", nargs=-1, metavar="[INPUT]...")
@click.option("--task", help="Task to run (default: the model's own), e.g. text-classification, "
              "ner, question-answering, fill-mask, feature-extraction, sentence-similarity, "
              "summarization, translation, text-generation.")
@click.option("--backend", type=click.Choice(["auto", "onnx", "torch"]), default="auto",
              show_default=True, help="auto: ONNX Runtime when an ONNX export exists, else PyTorch.")
@click.option("--int8", "int8", is_flag=True, help="Use the int8 (quantized) ONNX export.")
@click.option("--context", help="For question-answering: the text the questions (INPUT) are about.")
@click.option("--param", "params", multiple=True, callback=_param, metavar="KEY=VALUE",
              help="A pipeline parameter (repeatable), e.g. top_k=3, aggregation_strategy=first, "
              "max_new_tokens=20.")
@click.option("--inputs-json", metavar="JSON",
              help='The "inputs" as the HTTP API takes them, e.g. \'[{"text": "a", '
              '"text_pair": "b"}]\'; replaces INPUT.')
@json_option
@pass_app
def run_cmd(app, repo, texts, task, backend, int8, context, params, inputs_json, as_json):
    """Run a model from the depot on INPUT texts, offline, and print the answer.

    The answer has the shape transformers.pipeline gives, e.g. [{"label": "POSITIVE", "score":
    0.99}]. Without INPUT, lines are read from standard input and answered one per line, in
    order: line N of the output is the pipeline's answer for input line N within the batch (e.g.
    {"label": "POSITIVE", "score": 0.99}), null for a blank line. REPO may be REPO@REV or an alias
    (REPO@prod); an explicit path (./dir, /abs/dir) runs a local directory without registering it.

    \b
    Examples:
      modeldepot run org/sentiment "I loved this film"
      modeldepot run org/ner --param aggregation_strategy=first "Ada lives in Paris"
      modeldepot run org/qa --context "Paris is in France." "Where is Paris?"
      modeldepot run org/embedder --task feature-extraction "a sentence" --json
    """
    from ..inference.service import predict, prepare
    from ..inference.source import is_path
    from ..inference.tasks import inputs_from_texts, task_family

    # A directory needs no registry: skip opening it (start-up time).
    source, chosen = prepare(None if is_path(repo) else app.depot, repo, task)
    per_line = False  # stdin: one answer per input line (JSON Lines)
    if inputs_json is not None:
        if texts:
            raise click.UsageError("give either INPUT texts or --inputs-json, not both")
        try:
            inputs = json.loads(inputs_json)
        except json.JSONDecodeError as e:
            raise click.UsageError(f"--inputs-json is not valid JSON: {e}") from None
    else:
        if not texts and not sys.stdin.isatty():
            # Every line, blank ones too, so answer N is for line N.
            texts = tuple(line.rstrip("\n").rstrip("\r") for line in sys.stdin)
            per_line = task_family(chosen) != "sentence-similarity"
        if not texts:
            raise click.UsageError("give INPUT text(s), pipe lines on standard input, or use "
                                   "--inputs-json")
        lines = list(texts)
        if per_line:
            # The model answers the non-blank lines; blank ones keep their place as null.
            texts = tuple(t for t in lines if t.strip())
            if not texts:
                raise click.UsageError("standard input has only blank lines: give some text")
        inputs = inputs_from_texts(chosen, list(texts), context)
        if per_line and len(texts) == 1:
            inputs = [inputs]  # a list of one, so one line is answered as each of many is
    result = predict(None, repo, inputs, params, backend=backend,
                     precision="int8" if int8 else "fp32", prepared=(source, chosen))
    if per_line:
        _align_with_lines(result, lines)
    if result.warning:
        click.echo(f"warning: {result.warning}", err=True)
    for note in result.notes():
        click.echo(f"note: {note}", err=True)
    if as_json:
        emit_json(result.to_json())
    elif per_line:
        for one in result.output:
            click.echo(json.dumps(one, ensure_ascii=False))
    else:
        click.echo(json.dumps(result.output, ensure_ascii=False))


def _align_with_lines(result, lines: list[str]) -> None:
    """Put the answers (and truncation notes) back at their input line numbers."""
    positions = [i for i, line in enumerate(lines) if line.strip()]
    outputs = [None] * len(lines)
    for pos, out in zip(positions, result.output, strict=True):
        outputs[pos] = out
    result.output = outputs
    result.truncated = [positions[i] for i in result.truncated]
    if getattr(result, "token_truncated", None) is not None:
        result.token_truncated = [positions[i] for i in result.token_truncated]
    if getattr(result, "cut", None):
        result.cut = [positions[i] for i in result.cut]


def register(group: click.Group) -> None:
    group.add_command(run_cmd)
