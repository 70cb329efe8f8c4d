"""Library-level inference: every task equals transformers.pipeline on both backends; backend
choice; the tokenizer; the model cache and the batcher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from registry.errors import InvalidInput, Overloaded, Unavailable
from test_inference_zoo import CASES, LONG_TEXT, assert_close, reference, zoo_home, zoo_settings  # noqa: F401


@pytest.fixture(scope="module")
def zoo_depot(zoo_home):
    from registry.depot import Depot

    return Depot(zoo_settings(zoo_home))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_task_equals_pipeline(zoo_depot, models, case, backend):
    from registry.inference.service import predict

    _, repo, task, inputs, params = case
    answer = predict(zoo_depot, repo, inputs, params, task=task, backend=backend)
    assert answer.model["backend"] == backend
    assert_close(answer.output, reference(models, repo, task, inputs, params))


def test_auto_prefers_the_onnx_export_and_falls_back_to_torch(zoo_depot):
    from registry.inference.service import predict

    exported = predict(zoo_depot, "zoo/classifier", "good")
    onnx_commit = zoo_depot.resolve("model", "zoo/classifier", "onnx")["commit"]
    main_commit = zoo_depot.resolve("model", "zoo/classifier")["commit"]
    assert (exported.model["backend"], exported.model["commit"], exported.model["answered_by"]) \
        == ("onnx", main_commit, onnx_commit)
    # Naming the derived revision (its alias) answers from it, with the same source commit.
    direct = predict(zoo_depot, "zoo/classifier@onnx", "good")
    assert (direct.model["backend"], direct.model["commit"], direct.model["answered_by"]) \
        == ("onnx", main_commit, onnx_commit)
    assert direct.output == exported.output
    plain = predict(zoo_depot, "zoo/plain", "good")
    assert plain.model["backend"] == "torch"
    with pytest.raises(InvalidInput) as e:
        predict(zoo_depot, "zoo/plain", "good", backend="onnx")
    commit = zoo_depot.resolve("model", "zoo/plain")["commit"]
    assert str(e.value) == (
        f"zoo/plain@{commit[:12]} has no ONNX export for text-classification; create one with "
        "'modeldepot onnx export zoo/plain', or use --backend torch")


def test_long_input_is_truncated_and_said_so(zoo_depot, models):
    from registry.inference.service import predict

    from test_inference_zoo import _pipeline

    answer = predict(zoo_depot, "zoo/classifier", ["short one", LONG_TEXT])
    assert answer.truncated == [1]
    assert answer.notes() == ["input 1 truncated to 128 tokens (the model's maximum input length)"]
    pipe = _pipeline(models, "zoo/classifier", "text-classification")
    assert_close(answer.output, pipe(["short one", LONG_TEXT], truncation=True, max_length=128))


def test_onnx_path_for_encoder_tasks_imports_no_torch(zoo_home):
    script = (
        "import sys\n"
        "from registry.config import Settings\n"
        "from registry.depot import Depot\n"
        "from registry.inference.service import predict\n"
        f"depot = Depot(Settings.from_env(home={str(zoo_home)!r}))\n"
        "for repo, inputs in [('zoo/classifier', 'good'), ('zoo/ner', 'Ada in Paris'),\n"
        "                     ('zoo/qa', {'question': 'who?', 'context': 'Ada is here'}),\n"
        "                     ('zoo/fill-mask', 'a [MASK] day'), ('zoo/embedder', 'hello')]:\n"
        "    assert predict(depot, repo, inputs, task=None if repo != 'zoo/embedder' else\n"
        "                   'feature-extraction').model['backend'] == 'onnx'\n"
        "from cli import main\n"
        f"main(['--home', {str(zoo_home)!r}, 'run', 'zoo/classifier', 'good'],\n"
        "     standalone_mode=False)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("texts", [
    ["I loved this film!", "Ada lives in Paris, France.", "don't stop-me now"],
    [("Where does Ada live?", "Ada lives in Paris.")],
])
def test_fast_tokenizer_matches_transformers(models, texts):
    from transformers import AutoTokenizer

    from registry.inference.tokenizer import FastTokenizer

    src = models.get("qa")
    ours = FastTokenizer(src).encode(texts, 16)
    theirs = AutoTokenizer.from_pretrained(src)
    for text, enc in zip(texts, ours):
        pair = text if isinstance(text, tuple) else (text,)
        want = theirs(*pair, truncation=True, max_length=16, return_offsets_mapping=True)
        assert enc.ids == want["input_ids"]
        assert enc.type_ids == want["token_type_ids"]
        assert [tuple(o) for o in enc.offsets] == [tuple(o) for o in want["offset_mapping"]]
        assert FastTokenizer(src).decode(enc.ids, skip_special_tokens=True) == theirs.decode(
            want["input_ids"], skip_special_tokens=True)


# -- the model cache ----------------------------------------------------------------------------


def test_cache_unloads_least_recently_used_within_budget():
    from registry.inference.cache import MB, ModelCache

    unloaded = []
    cache = ModelCache(budget_bytes=100 * MB, on_unload=lambda key, model: unloaded.append(key))
    cache.get("a", 60 * MB, lambda: "A")
    cache.get("b", 30 * MB, lambda: "B")
    assert cache.get("a", 60 * MB, lambda: pytest.fail("loaded twice")) == "A"  # a is now recent
    cache.get("c", 30 * MB, lambda: "C")
    assert unloaded == ["b"]
    assert cache.loaded() == ["A", "C"] and cache.used_bytes == 90 * MB
    with pytest.raises(Unavailable) as e:
        cache.get("huge", 200 * MB, lambda: "H", label="org/huge")
    assert str(e.value) == ("org/huge needs about 200.0 MB resident, more than the memory budget "
                            "of 100 MB; restart the server with a larger --memory-budget-mb")
    assert cache.loaded() == ["A", "C"]


def test_cache_loads_once_for_concurrent_first_uses():
    from registry.inference.cache import ModelCache

    cache = ModelCache()
    calls, gate = [], threading.Event()

    def load():
        calls.append(1)
        gate.wait(5)
        return "M"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", 1, load)))
               for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert results == ["M"] * 4 and calls == [1]


def test_cache_forgets_a_failed_load():
    from registry.inference.cache import ModelCache

    cache = ModelCache()
    with pytest.raises(InvalidInput):
        cache.get("k", 1, lambda: (_ for _ in ()).throw(InvalidInput("broken")))
    assert cache.get("k", 1, lambda: "M") == "M"


# -- the batcher --------------------------------------------------------------------------------


def _run_batcher(coro_factory):
    return asyncio.run(coro_factory())


def test_batcher_groups_concurrent_items_and_keeps_order():
    from concurrent.futures import ThreadPoolExecutor

    from registry.inference.batcher import Batcher

    batches = []

    def run(items, params):
        batches.append((list(items), params))
        return [f"{x}{params.get('suffix', '')}" for x in items]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(run, pool, label="m", max_batch_size=5, max_wait_s=30)
            return await asyncio.gather(
                b.submit(list("abc"), {}), b.submit(list("de"), {}),
                b.submit(["x"], {"suffix": "!"}), b.submit(list("fghij"), {}))

    results = _run_batcher(main)
    assert results == [list("abc"), list("de"), ["x!"], list("fghij")]
    # Full batches go at once (no 30 s wait), oldest first; other parameters never share one.
    assert batches == [(list("abcde"), {}), (["x"], {"suffix": "!"}), (list("fghij"), {})]


def test_batcher_refuses_beyond_its_queue_and_isolates_item_errors():
    from concurrent.futures import ThreadPoolExecutor

    from registry.inference.batcher import Batcher

    def run(items, params):
        return [InvalidInput(f"bad {x}") if x == "bad" else x.upper() for x in items]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(run, pool, label="org/m", max_batch_size=4, max_wait_s=0.2, max_queue=3)
            # More inputs than the whole queue holds can never be admitted: not "retry".
            with pytest.raises(InvalidInput) as e:
                await b.submit(list("abcd"), {})
            assert str(e.value) == ("this request has 4 inputs; org/m queues at most 3 (the "
                                    "server's --max-queue): send at most 3 inputs per request")
            waiting = asyncio.ensure_future(b.submit(["x", "y"], {}))
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded) as e:
                await b.submit(["c", "d"], {})
            assert str(e.value) == ("org/m has 2 inputs waiting (the queue holds 3); retry "
                                    "shortly or send fewer inputs at once")
            assert await waiting == ["X", "Y"]
            return await b.submit(["ok", "bad"], {})

    ok, bad = _run_batcher(main)
    assert ok == "OK" and isinstance(bad, InvalidInput) and str(bad) == "bad bad"


def test_token_budget_splits_batches_without_changing_answers(zoo_depot):
    from registry.inference.backends import load_model
    from registry.inference.source import from_registry

    source = from_registry(zoo_depot, "zoo/classifier")
    texts = ["a good day", "a bad day in the city of paris", "ok", "the film was long and sad"]
    whole = load_model(source, "text-classification", "onnx")
    small = load_model(source, "text-classification", "onnx", max_batch_tokens=16)
    shapes = []
    engine = small.runner.engine
    small.runner.engine = lambda feeds: shapes.append(feeds["input_ids"].shape) or engine(feeds)
    assert [r.output for r in small.run(texts, {})] == [r.output for r in whole.run(texts, {})]
    # Sorted by length, each pass holds at most 16 padded tokens (a longer text goes alone).
    assert all(rows * width <= 16 or rows == 1 for rows, width in shapes) and len(shapes) > 1
    assert sum(rows for rows, _ in shapes) == len(texts)
