"""`modeldepot run`: pipeline-shaped answers on stdout, one-line errors, offline."""

from __future__ import annotations

import json

import pytest

from test_inference_zoo import LONG_TEXT, _pipeline, assert_close, zoo_home  # noqa: F401


@pytest.fixture
def run(cli, zoo_home):
    def invoke(*args, input=None):
        return cli("--home", zoo_home, "run", *args, input=input)

    return invoke


def test_run_prints_the_pipeline_answer(run, models):
    r = run("zoo/classifier", "I loved this film")
    assert r.exit_code == 0, r.output
    want = _pipeline(models, "zoo/classifier", "text-classification")("I loved this film")
    assert_close(json.loads(r.output), want)
    assert r.output.startswith('[{"label": "')


@pytest.mark.parametrize("args,repo,task,call", [
    (["zoo/qa", "--context", "Ada lives in Paris.", "Where does Ada live?"], "zoo/qa",
     "question-answering", lambda p: p(question="Where does Ada live?", context="Ada lives in Paris.")),
    (["zoo/fill-mask", "--param", "top_k=2", "paris is the [MASK] of france."], "zoo/fill-mask",
     "fill-mask", lambda p: p("paris is the [MASK] of france.", top_k=2)),
    (["zoo/ner", "--param", "aggregation_strategy=first", "--param", "ignore_labels=[]",
      "Ada lives in Paris"], "zoo/ner", "token-classification",
     lambda p: p("Ada lives in Paris", aggregation_strategy="first", ignore_labels=[])),
    (["zoo/classifier", "--backend", "torch", "--param", "top_k=null", "good", "bad"],
     "zoo/classifier", "text-classification", lambda p: p(["good", "bad"], top_k=None)),
])
def test_run_tasks_and_parameters(run, models, args, repo, task, call):
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert_close(json.loads(r.output), call(_pipeline(models, repo, task)))


def test_run_sentence_similarity_and_json_envelope(run, zoo_home):
    from registry.depot import Depot
    from test_inference_zoo import zoo_settings

    depot = Depot(zoo_settings(zoo_home))
    # a sentence-transformers repo embeds by default (as the Hub's Inference API does)
    r = run("zoo/embedder", "a good movie", "a good film", "the sea", "--json")
    assert json.loads(r.output)["task"] == "feature-extraction"
    r = run("zoo/embedder", "--task", "sentence-similarity", "a good movie", "a good film",
            "the sea", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) == {"model", "commit", "answered_by", "task", "backend", "precision",
                        "size_bytes", "warning", "truncated", "warnings", "outputs"}
    assert out["warning"] is None
    assert (out["model"], out["task"], out["backend"], out["precision"]) == (
        "zoo/embedder", "sentence-similarity", "onnx", "fp32")
    assert out["commit"] == depot.resolve("model", "zoo/embedder")["commit"]
    assert out["answered_by"] == depot.resolve("model", "zoo/embedder", "onnx")["commit"]
    assert len(out["outputs"]) == 2 and all(-1.0 <= s <= 1.0 for s in out["outputs"])


def test_run_reads_inputs_from_stdin_and_json(run, models):
    pipe = _pipeline(models, "zoo/classifier", "text-classification")
    r = run("zoo/classifier", input="first line\n\nsecond line\n")
    assert r.exit_code == 0, r.output
    # One answer per input line, so they line up: a blank line is answered with null.
    lines = r.output.splitlines()
    assert len(lines) == 3 and lines[1] == "null"
    assert_close([json.loads(lines[0]), json.loads(lines[2])], pipe(["first line", "second line"]))
    # One line is answered in the same shape as each of several.
    r = run("zoo/classifier", input="first line\n")
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 1
    assert_close(json.loads(r.output), pipe(["first line"])[0])
    r = run("zoo/ner", input="\nAda lives in Paris\n")
    assert r.exit_code == 0, r.output
    first, second = r.output.splitlines()
    assert first == "null"
    assert json.loads(second) == json.loads(run("zoo/ner", "Ada lives in Paris").output)
    r = run("zoo/classifier", "--json", input=f"\n{LONG_TEXT}\n")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["outputs"][0] is None and out["truncated"] == [1]
    assert r.stderr == "note: input 1 truncated to 128 tokens (the model's maximum input length)\n"
    r = run("zoo/classifier", "--inputs-json", '{"text": "a good movie", "text_pair": "a bad book"}')
    assert r.exit_code == 0, r.output
    assert_close(json.loads(r.output), pipe({"text": "a good movie", "text_pair": "a bad book"}))


def test_run_says_when_it_truncates(run, models):
    r = run("zoo/classifier", LONG_TEXT)
    assert r.exit_code == 0
    assert r.stderr == "note: input 0 truncated to 128 tokens (the model's maximum input length)\n"
    want = _pipeline(models, "zoo/classifier", "text-classification")(
        LONG_TEXT, truncation=True, max_length=128)
    assert_close(json.loads(r.stdout), want)


def test_run_an_ad_hoc_directory(cli, models):
    src = models.get("classifier")
    r = cli("run", str(src), "good")
    assert r.exit_code == 0, r.output
    assert_close(json.loads(r.output),
                 _pipeline(models, "zoo/classifier", "text-classification")("good"))


@pytest.mark.parametrize("args,error", [
    (["zoo/nope", "x"],
     "model 'zoo/nope' is not in the depot; import or pull it first (see 'modeldepot list')"),
    (["zoo/reviews", "x"], "zoo/reviews is a dataset repo; inference needs a model repo"),
    (["zoo/classifier", ""], '"inputs" is empty: send some text'),
    (["zoo/classifier", "ok", " "], "inputs[1] is empty: send some text"),
    (["zoo/classifier", "--task", "question-answering", "x"],
     "zoo/classifier cannot do question-answering: BertForSequenceClassification does "
     "text-classification"),
    (["zoo/qa", "where?"], "question-answering needs --context TEXT (the questions are INPUT)"),
    (["zoo/fill-mask", "no mask"],
     "input 0 has no [MASK] token: put [MASK] where the missing word goes"),
    (["zoo/classifier", "--param", "topk=2", "x"],
     "unknown parameter 'topk' for text-classification; accepted: top_k, function_to_apply"),
    (["zoo/classifier", "--int8", "x"],
     "the ONNX export has no int8 model (it has fp32); export one with --quantize int8"),
    (["zoo/embedder", "--task", "sentence-similarity", "only one"],
     "sentence-similarity needs two or more INPUT texts: the first is compared with the others"),
    (["./no/such/dir", "x"], "no such model directory: ./no/such/dir"),
])
def test_run_errors_are_one_line(run, args, error):
    r = run(*args)
    assert (r.exit_code, r.output) == (1, f"Error: {error}\n")


def test_run_usage_errors(run):
    r = run("zoo/classifier", "--param", "top_k")
    assert r.exit_code == 2 and "Invalid value for '--param': 'top_k': use KEY=VALUE" in r.output
    r = run("zoo/classifier")
    assert r.exit_code == 2
    assert "Error: give INPUT text(s), pipe lines on standard input, or use --inputs-json" in r.output


def test_run_help(cli):
    r = cli("run", "--help")
    assert r.exit_code == 0
    assert "Run a model from the depot on INPUT texts, offline" in r.output
    assert "--backend [auto|onnx|torch]" in r.output


def test_run_subprocess_is_offline(cli_subprocess, zoo_home, guard_log):
    """The real console script, ONNX and PyTorch paths, under the socket guard."""
    for args in (["zoo/classifier", "good"], ["zoo/qa", "--backend", "torch", "--context",
                                               "Ada lives in Paris.", "Where?"],
                 ["zoo/gpt2", "--param", "do_sample=false", "--param", "max_new_tokens=3",
                  "the movie"]):
        out = cli_subprocess("--home", zoo_home, "run", *args)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)
    assert guard_log() == ""
