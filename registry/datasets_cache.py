"""Prepare datasets for ``load_dataset("org/name")`` offline, from the depot's own files.

With ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``, ``datasets`` (5.0.1 and 5.2 alike) does not
resolve a repo id through the hub cache at all: ``CachedDatasetModuleFactory`` and the
``packaged_modules/cache`` builder look only in ``HF_DATASETS_CACHE`` for an already prepared
copy, laid out as ``<cache>/<org>___<name>/<config>/<version>/<hash>/`` holding
``dataset_info.json`` (whose ``config_name`` must equal the ``<config>`` folder) and
``<name>-<split>[-NNNNN-of-NNNNN].arrow``, taking the most recently modified ``<hash>``.

That is what an online ``load_dataset("org/name")`` leaves behind, so we produce it the same way:
``datasets`` reads the revision's snapshot directory (its card, configs and data-file layout, as
``dataset_module_factory`` finds them locally) and its own builder writes the Arrow files, under
the repo id and with the commit as the hash, exactly as the Hub module factory names them. No
network is touched: the data files are the snapshot's links into the depot's blobs.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import InvalidInput
from .store.views import ensure_view


def prepare_dataset(depot, name: str, rev: str | None = None) -> dict:
    """Build the ``datasets`` cache of every config of ``name@rev`` (default: main).

    Returns {repo, commit, cache_dir, configs: [{config, path, splits: {split: rows}}]}.
    Preparing again is a no-op for configs already there.
    """
    resolved = depot.resolve("dataset", name, rev)
    commit = resolved["commit"]
    snapshot = str(ensure_view(depot, "dataset", resolved["repo"], commit))
    cache_dir = depot.settings.datasets_cache
    cache_dir.mkdir(parents=True, exist_ok=True)

    import datasets
    from datasets.load import dataset_module_factory

    datasets.disable_progress_bars()
    with _quiet():  # e.g. "Repo card metadata block was not found": not news to a user here
        try:
            module = dataset_module_factory(snapshot)
        except (FileNotFoundError, ValueError) as e:
            raise InvalidInput(f"datasets cannot read datasets/{name}@{commit[:12]}: {e}") from None
        return _build(depot, name, commit, module, cache_dir)


@contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("datasets", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _build(depot, name: str, commit: str, module, cache_dir: Path) -> dict:
    import datasets
    from datasets.load import get_dataset_builder_class
    from datasets.naming import camelcase_to_snakecase

    dataset_name = camelcase_to_snakecase(name.split("/")[-1])
    namespace = name.split("/")[0] if "/" in name else None
    builder_kwargs = dict(module.builder_kwargs)
    builder_kwargs.update(dataset_name=dataset_name)
    builder_kwargs.pop("config_name", None)
    params = module.builder_configs_parameters
    configs = [c.name for c in params.builder_configs] if params.metadata_configs else [None]
    local_cls = get_dataset_builder_class(module, dataset_name=dataset_name)

    def _relative_data_dir(self, with_version=True, with_hash=True) -> str:
        # The Hub module factory's folder, <org>___<name>/...: passing repo_id would name it so
        # too, but makes the builder refuse data files that are not hf:// URLs of the repo.
        rel = local_cls._relative_data_dir(self, with_version, with_hash)
        return f"{namespace}___{rel}" if namespace else rel

    builder_cls = type(local_cls.__name__, (local_cls,), {"_relative_data_dir": _relative_data_dir})
    out = []
    for config in configs:
        info = module.dataset_infos.get(config) if module.dataset_infos else None
        builder = builder_cls(cache_dir=str(cache_dir), config_name=config, hash=commit,
                              info=info, **builder_kwargs)
        builder.download_and_prepare(download_mode=datasets.DownloadMode.REUSE_DATASET_IF_EXISTS)
        # datasets offline takes the most recently modified hash: make it this one
        os.utime(builder.cache_dir)
        out.append({
            "config": builder.config.name,
            "path": str(Path(builder.cache_dir)),
            "splits": {s: builder.info.splits[s].num_examples for s in builder.info.splits},
        })
    return {"repo": name, "commit": commit, "cache_dir": str(cache_dir), "configs": out}
