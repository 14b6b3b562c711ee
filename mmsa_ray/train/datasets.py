"""The datasets the training workers read, built by the driver (mmsa_ray.train.driver):

    cached mode      MELD split ─► featurize (frozen-encoder outputs, cached Parquet) ─► feature_dataset
    end-to-end mode  MELD split ─► raw clips decoded and featurized by Ray Data every epoch

Both leave out the clips that failed to decode (their rows carry an `error`)."""

from __future__ import annotations

import os

import numpy as np

from mmsa_ray.train.loop import TrainConfig


def drop_error_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data map_batches: keep the rows whose error is null."""
    from mmsa_ray.train.featurize import is_error

    keep = np.array([not is_error(e) for e in batch["error"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def cached_datasets(records: dict, model, modalities, job, cache_dir: str, info: dict):
    """Cached mode: each split featurized (or its cache reused; `job`: the driver's JobConfig, for its
    featurize actors and batch size), read back as a Ray Dataset without the failed clips. Returns the
    datasets and the failed clips' ids per split; adds the featurize times to `info`."""

    from mmsa_ray.train import featurize

    feats = {}
    for split, recs in records.items():
        feats[split] = featurize.featurize_records(
            recs, model, split, modalities=modalities, cache_dir=cache_dir, actors=job.actors,
            gpus_per_actor=job.gpus_per_actor, batch_size=job.featurize_batch_size)
        print("[featurize] " + feats[split].summary(), flush=True)
    bad = {s: {e["id"] for e in f.errors} for s, f in feats.items()}
    datasets = {s: feature_dataset(f.path) for s, f in feats.items()}
    info["featurize_s"] = {s: f.seconds for s, f in feats.items()}
    info["failed_clips"] = {s: len(f.errors) for s, f in feats.items()}
    return datasets, bad


def feature_dataset(path: str, share: float = 0.1, block_rows: int = 256):
    """A split's cached features (a folder of Parquet files) as a Ray Dataset without the failed
    clips' rows. A cache whose files take at most `share` of the object store is read here and
    held there in blocks of `block_rows`: every epoch then splits blocks already in memory, where
    Ray Data would list, read and filter the files again (10-20 s a run on a laptop whatever the
    size, even to materialize them once). A larger cache streams from its files every epoch."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    import ray

    from mmsa_ray.sources import resolve

    fs, root = resolve(path)
    files = sorted((f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                    if f.type == pafs.FileType.File and f.path.endswith(".parquet")), key=lambda f: f.path)
    store = ray.available_resources().get("object_store_memory", 0.0)
    if sum(f.size or 0 for f in files) > share * store:
        return ray.data.read_parquet(path).map_batches(drop_error_rows, batch_format="numpy", batch_size=256)
    table = pads.dataset([f.path for f in files], filesystem=fs, format="parquet").to_table()
    table = table.filter(pc.fill_null(pc.equal(table["error"], ""), True))  # featurize.is_error's complement
    return ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, max(1, table.num_rows), block_rows)])


def streamed_datasets(records: dict, init_model: str, cfg: TrainConfig, run_dir: str) -> dict:
    """End-to-end mode: each split's raw clips, decoded and featurized by Ray Data every epoch
    (training rows with cfg.speaker_dropout of them unmarked)."""
    from mmsa_ray.train import featurize

    datasets = {}
    for split, recs in records.items():
        staging = os.path.join(run_dir, "_staging", f"{split}.parquet")
        dropout = cfg.speaker_dropout if split == "train" else 0.0
        datasets[split] = featurize.raw_dataset(recs, init_model, cfg.modalities, staging, speaker_dropout=dropout,
                                                seed=cfg.seed).map_batches(
            drop_error_rows, batch_format="numpy", batch_size=64)
    return datasets
