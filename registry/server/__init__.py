"""``modeldepot serve``: one aiohttp app with three route families.

- ``hub_api``: the read-only Hub API and file resolution for unmodified HF clients;
- ``inference_api``: Inference-API-style and OpenAI-compatible inference;
- ``ops``: ``/health`` and ``/metrics``.
"""
