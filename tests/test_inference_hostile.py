"""The inference API under hostile and careless input (issue 11): every request is answered,
inputs cost what the model can use, errors are 4xx that say why, 500s say nothing of their cause,
and the memory budget counts what is resident."""

from __future__ import annotations

import asyncio
import json

import pytest

from test_inference_server import post, serve
from test_inference_zoo import assert_close, reference, zoo_home  # noqa: F401

INTERNAL = {"error": "internal error: the server log has the details",
            "error_type": "InternalError"}


def invalid(message: str) -> dict:
    return {"error": message, "error_type": "InvalidInput"}


async def within(coro, seconds: float = 120):
    """A request that is never answered fails the test instead of hanging it."""
    return await asyncio.wait_for(coro, seconds)


def _real_panic(tokenizer_file):
    """Raise what the Rust tokenizer raises on a stride too large: pyo3's PanicException, a
    BaseException and not an Exception."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.enable_truncation(16, stride=10, strategy="only_second")
    tok.encode_batch([("a b c d e f", "a b c d e f g h i j k l m n o p")])


# -- item 1: every request in a failed batch is answered --------------------------------------


def test_a_tokenizer_panic_fails_only_its_own_request_with_a_422(zoo_home):
    """A 9,000-character context with doc_stride 124 and max_seq_len 128 made the tokenizer
    panic; the batch's futures were never resolved and the connection hung. Now the panicking
    input is refused (it is the input's fault) and the other request of the batch is answered."""
    params = {"doc_stride": 124, "max_seq_len": 128}
    long = {"question": "who?", "context": "Ada lives in Paris. " * 450}
    short = {"question": "who?", "context": "Ada lives in Paris."}

    async def check(client, app):
        bad, good = await within(asyncio.gather(
            post(client, "/models/zoo/qa", {"inputs": long, "parameters": params}),
            post(client, "/models/zoo/qa", {"inputs": short, "parameters": params})))
        assert bad[:2] == (422, invalid(
            "input 0 could not be tokenized: `stride` must be strictly less than `max_len=123` "
            "(note that `max_len` may be shorter than the max length of the original model, as "
            "it subtracts the number of special characters"))
        assert good[0] == 200 and good[1]["answer"]
        # And alone (a batch of one): the same answer, and the server still serves.
        alone = await within(post(client, "/models/zoo/qa", {"inputs": long, "parameters": params}))
        assert alone[:2] == bad[:2]

    serve(zoo_home, check, max_batch_size=2, max_wait_ms=10000)


def test_a_batch_that_raises_a_base_exception_answers_every_request_with_a_plain_500(zoo_home):
    from registry.server.inference_api import INFERENCE

    async def check(client, app):
        assert (await post(client, "/models/zoo/classifier", {"inputs": "warm up"}))[0] == 200
        [model] = app[INFERENCE].cache.loaded()
        engine = model.runner.engine
        tokenizer_file = model.source.snapshot / "tokenizer.json"
        model.runner.engine = lambda feeds: _real_panic(tokenizer_file)
        answers = await within(asyncio.gather(*(
            post(client, "/models/zoo/classifier", {"inputs": text}) for text in ("a", "b", "c"))))
        assert [a[:2] for a in answers] == [(500, INTERNAL)] * 3
        # An ordinary exception: a 500 whose body says nothing of it either.
        model.runner.engine = lambda feeds: (_ for _ in ()).throw(
            RuntimeError("secret detail /srv/depot/blobs"))
        status, body, _ = await within(post(client, "/models/zoo/classifier", {"inputs": "d"}))
        assert (status, body) == (500, INTERNAL)
        model.runner.engine = engine
        status, body, _ = await within(post(client, "/models/zoo/classifier", {"inputs": "e"}))
        assert status == 200 and body[0]["label"]

    serve(zoo_home, check, max_batch_size=3, max_wait_ms=200)


def test_batcher_answers_every_item_whatever_the_batch_raises():
    from concurrent.futures import ThreadPoolExecutor

    from registry.inference.batcher import BatchFailed, Batcher

    class Panic(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def run(items, params):
        if "panic" in items:
            raise Panic("boom")
        return [x.upper() for x in items]

    async def main():
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(run, pool, label="org/m", max_batch_size=3, max_wait_s=0.05)
            first, second = await asyncio.wait_for(asyncio.gather(
                b.submit(["panic"], {}), b.submit(["x", "y"], {})), 10)
            assert [type(r) for r in first + second] == [BatchFailed] * 3
            assert str(first[0]) == "Panic in a batch of org/m"
            assert isinstance(first[0].__cause__, Panic)
            assert await asyncio.wait_for(b.submit(["ok"], {}), 10) == ["OK"]  # still working

    asyncio.run(main())


def test_closing_a_batcher_answers_the_running_batch_and_the_queue():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from registry.inference.batcher import BatchFailed, Batcher

    gate = threading.Event()

    def run(items, params):
        gate.wait(10)
        return items

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(run, pool, label="org/m", max_batch_size=1, max_wait_s=0)
            running = asyncio.ensure_future(b.submit(["a"], {}))
            waiting = asyncio.ensure_future(b.submit(["b"], {}))
            await asyncio.sleep(0.1)
            await b.close()
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(running, waiting), 10)
            assert [type(r[0]) for r in results] == [BatchFailed, BatchFailed]
            assert str(results[1][0]) == "org/m stopped (CancelledError)"

    asyncio.run(main())


def test_system_exit_in_a_batch_answers_the_batch_then_goes_on_stopping():
    """KeyboardInterrupt and SystemExit keep their meaning for the process; the requests of the
    batch they came from are answered first."""
    from concurrent.futures import ThreadPoolExecutor

    from registry.inference.batcher import BatchFailed, Batcher

    def run(items, params):
        raise SystemExit(3)

    futures = []

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(run, pool, label="org/m", max_batch_size=1, max_wait_s=0.05)
            asyncio.ensure_future(b.submit(["a"], {}))
            asyncio.ensure_future(b.submit(["b"], {}))
            await asyncio.sleep(0)
            futures.extend(p.future for p in b._queue)
            await asyncio.sleep(10)

    with pytest.raises(SystemExit):
        asyncio.run(main())
    assert len(futures) == 2 and all(f.done() for f in futures)
    assert [type(f.exception()) for f in futures] == [BatchFailed, BatchFailed]


# -- item 2: big inputs are cut before they are tokenized ------------------------------------

CUT = ("cut to 4,096 characters before tokenizing (32 per token of the model's maximum input "
       "length)")


def test_a_15_mb_input_is_cut_before_tokenizing_and_says_so(zoo_home):
    huge = "the film was good " * 870_000  # 15.7 MB, under the 16 MiB body limit

    async def check(client, app):
        status, body, headers = await within(post(client, "/models/zoo/classifier",
                                                  {"inputs": ["fine", huge]}), 60)
        assert status == 200
        assert headers["X-Truncated-Inputs"] == "1"
        assert headers["X-Inference-Warning"] == (
            "input 1 truncated to 128 tokens (the model's maximum input length); input 1 " + CUT)
        # The cut drops only what truncation drops anyway: the same answer as a shorter text.
        _, shorter, _ = await post(client, "/models/zoo/classifier",
                                   {"inputs": ["fine", huge[:2000]]})
        assert body == shorter

    serve(zoo_home, check)


def test_64_inputs_of_200_kb_are_cut_and_the_warning_stays_one_short_line(zoo_home):
    texts = [f"{i} the film was good " + "and long " * 22_000 for i in range(64)]

    async def check(client, app):
        status, body, headers = await within(post(client, "/models/zoo/classifier",
                                                  {"inputs": texts}), 60)
        assert status == 200 and len(body) == 64
        assert headers["X-Truncated-Inputs"] == ",".join(str(i) for i in range(64))
        assert headers["X-Inference-Warning"] == (
            "inputs 0-63 truncated to 128 tokens (the model's maximum input length); "
            "inputs 0-63 " + CUT)

    serve(zoo_home, check)


@pytest.mark.parametrize("repo, body, status, warning", [
    ("zoo/qa", {"inputs": {"question": "who?", "context": "Ada lives in Paris. " * 450}},
     200, "input 0 " + CUT),
    ("zoo/bart", {"inputs": "the movie was good " * 300, "parameters": {"max_new_tokens": 2}},
     200, "input 0 truncated to 128 tokens (the model's maximum input length); input 0 " + CUT),
    ("zoo/gpt2", {"inputs": "a " * 3000, "parameters": {"max_new_tokens": 2}}, 422,
     "input 0 is 6,000 characters; this model takes at most 128 tokens of prompt and generated "
     "text together: shorten the prompt"),
])
def test_every_task_family_cuts_long_texts_before_tokenizing(zoo_home, repo, body, status, warning):
    async def check(client, app):
        got, answer, headers = await within(post(client, f"/models/{repo}", body))
        assert got == status
        if status == 200:
            assert headers["X-Truncated-Inputs"] == "0"
            assert headers["X-Inference-Warning"] == warning
        else:
            assert answer == invalid(warning)

    serve(zoo_home, check)


# -- item 3: input faults are 4xx --------------------------------------------------------------


def test_max_length_on_generation_stays_within_the_model_positions(zoo_home, models):
    """max_length with the pipeline's default max_new_tokens (256) ran past the 128 positions
    of the model (IndexError, or an ONNX Runtime Gather error): a 500."""
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(models.get("gpt2"))("the movie")["input_ids"])

    async def check(client, app):
        status, body, _ = await within(post(client, "/models/zoo/gpt2", {
            "inputs": "the movie", "parameters": {"max_length": 20, "do_sample": False}}))
        assert status == 200, body
        assert_close(body, reference(models, "zoo/gpt2", "text-generation", "the movie",
                                     {"do_sample": False, "max_new_tokens": 20 - n}))
        status, body, _ = await within(post(client, "/pipeline/text2text-generation/zoo/bart", {
            "inputs": "the movie", "parameters": {"max_length": 20}}))
        assert status == 200, body
        assert_close(body, reference(models, "zoo/bart", "text2text-generation", "the movie",
                                     {"max_new_tokens": 19}))
        status, body, _ = await post(client, "/models/zoo/gpt2", {
            "inputs": "the movie", "parameters": {"max_length": 3}})
        assert (status, body) == (422, invalid(
            f"input 0 is {n} tokens, which leaves no room under max_length 3: raise max_length "
            "or set max_new_tokens"))

    serve(zoo_home, check)


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("path, body, example", [
    ("/models/zoo/classifier", DEEP, '{"inputs": "some text"}'),
    ("/v1/embeddings", DEEP, '{"model": "org/name", "input": "text"}'),
    ("/models/zoo/classifier", '{"inputs": "x", "parameters": {"top_k": ' + DEEP + "}}",
     '{"inputs": "some text"}'),
])
def test_deeply_nested_json_is_a_422_not_a_recursion_error(zoo_home, path, body, example):
    async def check(client, app):
        got = await within(post(client, path, body))
        assert got[:2] == (422, invalid("the request body is not JSON this API accepts (nested "
                                        f"deeper than 32 levels): send {example}"))

    serve(zoo_home, check)


@pytest.mark.parametrize("raw, error", [
    ('{"inputs": "x", "parameters": {"top_p": NaN}}',
     "the request body is not JSON this API accepts (NaN is not a valid JSON number): send "
     '{"inputs": "some text"}'),
    ('{"inputs": "x", "parameters": {"temperature": Infinity}}',
     "the request body is not JSON this API accepts (Infinity is not a valid JSON number): send "
     '{"inputs": "some text"}'),
    ('{"inputs": "x", "parameters": {"temperature": -Infinity}}',
     "the request body is not JSON this API accepts (-Infinity is not a valid JSON number): "
     'send {"inputs": "some text"}'),
    # 1e999 is valid JSON, and Python's parser makes it infinity.
    ('{"inputs": "x", "parameters": {"temperature": 1e999}}',
     "parameter 'temperature' must be a finite number >= 0.0"),
    ('{"inputs": "x", "parameters": {"top_p": 1e999}}',
     "parameter 'top_p' must be a finite number between 0.0 and 1.0"),
])
def test_non_finite_numbers_are_refused(zoo_home, raw, error):
    async def check(client, app):
        got = await within(post(client, "/models/zoo/gpt2", raw))
        assert got[:2] == (422, invalid(error))

    serve(zoo_home, check)


# -- item 10: cross-site posts, the spec and the validation agree ----------------------------


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "application/json; charset=x-bogus", None])
def test_a_body_not_sent_as_json_runs_nothing_415(zoo_home, content_type):
    """A page on any site may POST text/plain to a loopback server without asking the user;
    that must not run a model (nor crash on an unknown charset)."""
    from registry.server.inference_api import INFERENCE

    async def check(client, app):
        headers = {"Content-Type": content_type} if content_type else {}
        r = await within(client.post("/models/zoo/classifier", data=b'{"inputs": "x"}',
                                     headers=headers))
        got = content_type or "application/octet-stream"
        assert (r.status, await r.json()) == (415, {
            "error": "the request body must be UTF-8 JSON sent with 'Content-Type: "
                     f"application/json' (got {got!r}): send {{\"inputs\": \"some text\"}}",
            "error_type": "UnsupportedMediaType"})
        assert app[INFERENCE].cache.loaded() == []
        r = await client.post("/models/zoo/classifier", data=b'{"inputs": "x"}',
                              headers={"Content-Type": "application/json; charset=UTF-8"})
        assert r.status == 200

    serve(zoo_home, check)


def test_the_spec_names_every_parameter_the_tasks_take():
    from registry.inference.tasks import PARAMETERS
    from registry.server.inference_spec import PARAMETER_SCHEMAS

    assert set(PARAMETER_SCHEMAS) == {name for names in PARAMETERS.values() for name in names}


SPEC_CASES = [  # (path, body, allowed by the spec) against models whose task fits the body
    ("/models/zoo/classifier", {"inputs": "x", "options": None}, True),
    ("/models/zoo/classifier", {"inputs": "x", "parameters": None, "options": {}}, True),
    ("/models/zoo/classifier", {"inputs": "x", "options": False}, False),
    ("/models/zoo/classifier", {"inputs": "x", "options": {"use_cache": "yes"}}, False),
    ("/models/zoo/classifier", {"inputs": "x", "options": {"wait_for_model": True}}, True),
    ("/models/zoo/classifier", {"inputs": "x", "parameters": {"top_k": 2.0}}, True),
    ("/models/zoo/classifier", {"inputs": "x", "parameters": {"top_k": None}}, True),
    ("/models/zoo/classifier", {"inputs": "x", "parameters": {"function_to_apply": "Sigmoid"}},
     True),
    ("/models/zoo/classifier", {"inputs": "x", "parameters": {"function_to_apply": "tanh"}},
     False),
    ("/models/zoo/classifier", {"inputs": "x", "parameters": {"bogus": 1}}, False),
    ("/models/zoo/classifier", {"inputs": "x", "extra": 1}, False),
    ("/models/zoo/classifier", {"inputs": " \n"}, False),
    ("/models/zoo/classifier", {"inputs": "\udabf"}, True),  # a lone surrogate: U+FFFD
    ("/models/zoo/classifier", {"inputs": ["a", "b"]}, True),
    ("/models/zoo/classifier", {"inputs": ["a", "b", "c"]}, False),  # over --max-queue 2
    ("/models/zoo/classifier", {"inputs": {"text": "a", "text_pair": "b"}}, True),
    ("/models/zoo/classifier", {"inputs": {"text": "a"}}, False),
    ("/models/zoo/qa", {"inputs": {"question": "who?", "context": "Ada is here"}}, True),
    ("/models/zoo/qa", {"inputs": {"question": "who?", "context": "Ada", "x": 1}}, False),
    ("/models/zoo/embedder", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}, True),
    ("/models/zoo/embedder", {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}},
     False),  # three items, over --max-queue 2
    ("/models/zoo/gpt2", {"inputs": "x", "parameters": {"max_new_tokens": 1, "top_p": 0.5}},
     True),
    ("/models/zoo/gpt2", {"inputs": "x", "parameters": {"top_p": 1.5}}, False),
    ("/models/zoo/gpt2", {"inputs": "x", "parameters": {"max_new_tokens": 1, "temperature": 0.5,
                                                        "do_sample": True}}, True),
    ("/models/zoo/gpt2", {"inputs": "x", "parameters": {"max_new_tokens": True}}, False),
    ("/v1/embeddings", {"model": "zoo/embedder", "input": "a", "dimensions": None, "user": "u"},
     True),
    ("/v1/embeddings", {"model": "zoo/embedder", "input": "a", "user": 7}, False),
    ("/v1/embeddings", {"model": "zoo/embedder", "input": "a", "dimensions": 8}, False),
    ("/v1/embeddings", {"model": "zoo/embedder", "input": [1, 2]}, False),
    ("/v1/embeddings", {"model": "zoo/embedder", "input": ["a", "b", "c"]}, False),
    ("/v1/embeddings", {"model": "zoo/embedder", "input": "a", "encoding_format": None}, False),
]


def test_the_spec_allows_exactly_what_the_server_takes(zoo_home):
    """What schemathesis checks, on bodies where the model's task fits: a body the served spec
    allows is answered 200, one it refuses is answered 422."""
    import jsonschema

    async def check(client, app):
        spec = await (await client.get("/openapi.json")).json()
        for path, body, allowed in SPEC_CASES:
            route = "/models/{repo_id}" if path.startswith("/models/") else path
            schema = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"][
                "schema"]
            valid = jsonschema.Draft202012Validator(schema).is_valid(body)
            status, answer, _ = await within(post(client, path, json.dumps(body)))
            assert (valid, status) == (allowed, 200 if allowed else 422), (path, body, answer)

    serve(zoo_home, check, max_queue=2)


# -- item 9: one load per set of weights, bounded caches --------------------------------------


def test_one_load_answers_the_embeddings_route_and_the_models_route(zoo_home):
    """The embedder's graph was loaded twice (feature-extraction for /v1/embeddings,
    sentence-similarity for /models), and counted twice against the budget."""
    from registry.server.inference_api import INFERENCE

    async def check(client, app):
        service = app[INFERENCE]
        status, _, _ = await post(client, "/v1/embeddings", {"model": "zoo/embedder",
                                                             "input": "a"})
        assert status == 200
        status, body, headers = await post(client, "/models/zoo/embedder", {
            "inputs": {"source_sentence": "a", "sentences": ["a", "b"]}})
        assert status == 200 and headers["X-Task"] == "sentence-similarity"
        assert body[0] == pytest.approx(1.0, abs=1e-5)
        assert len(service.cache.loaded()) == 1
        # Summarization and translation of one BART: one load too.
        for task in ("summarization", "translation", "text2text-generation"):
            status, _, headers = await post(client, f"/pipeline/{task}/zoo/bart", {
                "inputs": "a day", "parameters": {"max_new_tokens": 1}})
            assert (status, headers["X-Task"]) == (200, task)
        assert len(service.cache.loaded()) == 2
        lines = (await (await client.get("/metrics")).text()).splitlines()
        assert len([line for line in lines
                    if line.startswith("modeldepot_model_memory_bytes{")]) == 2

    serve(zoo_home, check)


def test_request_paths_cannot_grow_the_resolution_cache(zoo_home):
    """4,000 requests with differently padded task names kept 4,000 resolutions (~20 MB)."""
    from registry.server.inference_api import INFERENCE

    async def check(client, app):
        service = app[INFERENCE]
        service.RESOLVE_MAX = 20
        for i in range(60):
            status, _, _ = await post(client, f"/pipeline/{'%20' * i}text-classification"
                                              "/zoo/classifier", {"inputs": "x"})
            assert status == 200
        assert len(service._resolved) == 20

    serve(zoo_home, check)


def test_open_ended_task_names_share_one_load_and_a_bounded_set_of_pipelines(zoo_home):
    """translation_xx_to_yy names are the client's choice: each used to be a load of its own."""
    from registry.server.inference_api import INFERENCE

    async def check(client, app):
        service = app[INFERENCE]
        for lang in "abcdefghij":
            status, _, headers = await within(post(
                client, f"/pipeline/translation_en_to_{lang}/zoo/bart",
                {"inputs": "a day", "parameters": {"max_new_tokens": 1}}))
            assert (status, headers["X-Task"]) == (200, f"translation_en_to_{lang}")
        [model] = service.cache.loaded()
        assert len(model._views) == model.MAX_VIEWS == 8

    serve(zoo_home, check)
