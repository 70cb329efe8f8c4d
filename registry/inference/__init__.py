"""Local inference from mirrored artifacts, for ``modeldepot run`` and ``modeldepot serve``.

- ``tasks``: task names, what a model can do, request validation, pipeline-shaped outputs;
- ``source``: which revision and files answer (the registry, ONNX derived revisions, ad-hoc dirs);
- ``tokenizer``: a torch-free fast tokenizer (``tokenizers`` + the repo's tokenizer files);
- ``encoders``: pre/post-processing of encoder tasks in numpy, equal to the transformers pipeline;
- ``backends``: ONNX Runtime and PyTorch engines, and the generation pipelines;
- ``cache``: loaded models within a memory budget (least recently used unloaded first);
- ``batcher``: dynamic batching of concurrent requests (server);
- ``service``: the entry points both the CLI and the server call.

Nothing here imports torch or transformers at module level: the ONNX Runtime path for encoder
tasks must run without them (cold start, install size).
"""
