"""Clip records -> cached frozen-encoder features, as Parquet (Ray Data).

    records ─► staging manifest (Parquet) ─► ray.data.read_parquet
        ─► map_batches(decode_and_featurize)       CPU tasks: PyAV decode + log-mel + tokens,
                                                    one error row per clip that fails
        ─► map_batches(BackboneEncoder)            actor pool (--actors, --gpus-per-actor):
                                                    frozen r3d_18 + BERT -> embeddings
        ─► Parquet in record order (sink.py)       <cache>/<key>/.<split>.tmp-*
                                                    ─► rename to <cache>/<key>/<split>, _COMPLETE

One output row per clip (`OUTPUT_SCHEMA`): id, emotion_index, sentiment_index, split,
video_emb list<float32> [512], text_emb list<float32> [hidden], audio list<float16>
(the log-mel [1, 64, 300] flattened; empty when audio is absent or not featurized),
mask list<float32> [3] (text, audio, video; all zero for error rows), error (null when fine).

The cache key hashes what the features depend on: every record's id, path, size and
mtime (and transcript), the featurized modalities, the frozen encoders' weights (a
digest of the tensors, so a random-initialised trunk is keyed by its values) and the
decode + feature config. A complete output directory holds ``_COMPLETE`` (JSON summary)
and is reused as is; an incomplete one (a crash) is ignored and rebuilt.

Text only (modalities without audio and video, or no clip files at all, e.g. the MELD
CSVs alone) never opens a media file: the CPU stage only tokenizes.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmsa_ray import checkpoint
from mmsa_ray.features import DEFAULT_MEL_SHAPE
from mmsa_ray.labels import MODALITIES, parse_modalities
from mmsa_ray.sink import ordered_parquet_datasink
from mmsa_ray.train import model_args

COMPLETE = "_COMPLETE"
MODEL_DIR = "model"  # <cache>/<key>/model: the model whose frozen encoders made these features
# A cached row is ~42 KB (the float16 log-mel dominates): files of ~43 MB, read in blocks of ~2.7 MB.
CACHE_ROWS_PER_FILE = 1024
CACHE_ROW_GROUP_ROWS = 64


def default_cache_dir(storage_path: str | None = None) -> str:
    """$MMSA_CACHE_DIR, else <storage_path>/features, else ~/ray_results/features."""
    if os.environ.get("MMSA_CACHE_DIR"):
        return os.environ["MMSA_CACHE_DIR"]
    base = storage_path or os.path.expanduser("~/ray_results")
    return os.path.join(base, "features")


@dataclass
class FeaturizeResult:
    """Where the features are and what happened. errors: [{"id", "error"}] of failed clips."""

    path: str
    key: str
    split: str
    rows: int
    errors: list[dict] = field(default_factory=list)
    reused: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        how = "reused cache" if self.reused else f"featurized in {self.seconds:.1f} s"
        line = f"{self.split}: {self.rows} clips, {len(self.errors)} failed ({how}) -> {self.path}"
        if self.errors:
            line += "\n  failed: " + ", ".join(f"{e['id']} ({e['error'][:120]})" for e in self.errors[:5])
            if len(self.errors) > 5:
                line += f", ... {len(self.errors) - 5} more"
        return line


# ----------------------------------------------------------------------------- cache key


def tensor_digest(module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes)."""
    from mmsa_ray.checkpoint import tensor_digest as digest

    return digest(module.state_dict())


def needs_media(modalities, records) -> bool:
    """True when some clip file must be decoded: audio or video wanted and a record has a path."""
    return bool({"audio", "video"} & set(modalities)) and any(r.path for r in records)


def cache_key(records, model, modalities) -> str:
    """Hex key of (records, modalities, frozen encoder weights of the used modalities, preprocessing config)."""
    modalities = tuple(m for m in MODALITIES if m in modalities)
    h = hashlib.sha256()
    h.update(json.dumps({"v": 1, "modalities": modalities}).encode())
    media = needs_media(modalities, records)
    for r in records:
        st = os.stat(r.path) if (media and r.path) else None
        h.update(json.dumps([r.id, r.path if media else None, st.st_size if st else None,
                             st.st_mtime_ns if st else None, r.transcript if "text" in modalities else None,
                             r.emotion, r.sentiment]).encode())
    cfg = model.config
    parts = {"features": cfg.features.__dict__ if {"text", "audio"} & set(modalities) else None}
    if "video" in modalities:
        used = ("num_frames", "height", "width", "sample_rate")
        parts["decode"] = {k: v for k, v in cfg.decode.__dict__.items() if k in used}
        parts["video"] = tensor_digest(model.video_backbone)
    elif "audio" in modalities:
        parts["decode"] = {"sample_rate": cfg.decode.sample_rate}
    if "text" in modalities:
        parts["text"] = tensor_digest(model.text_encoder)
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


# ----------------------------------------------------------------------------- stage 1: CPU


@functools.lru_cache(maxsize=4)
def _preprocessing(model_dir: str):
    """The checkpoint's Preprocessing (decode/feature config + tokenizer), once per worker
    process: the same decode + features path as label and serve."""
    from mmsa_ray.predict import Preprocessing

    return Preprocessing.from_checkpoint(model_dir)


def decode_and_featurize(batch: dict[str, np.ndarray], model_dir: str, modalities: tuple[str, ...],
                         decode_media: bool) -> dict[str, np.ndarray]:
    """Manifest rows -> raw model inputs (Ray Data map_batches, numpy format).

    Input columns: id, path, transcript, split, emotion_index, sentiment_index, and
    optionally context (earlier transcripts of the dialogue, oldest first) and future (the
    later ones, in time order).
    Output: those labels plus "audio" float32 [B,1,64,300], "input_ids"/"attention_mask"
    int64 [B,L], "mask" float32 [B,3] (limited to `modalities`), "error" (None or a
    message), and "video" float32 [B,3,T,H,W] when video is wanted. A clip that fails to
    decode becomes a row of zeros with mask 0 and its error; the batch never fails.
    Without `decode_media` no file is opened (text only).
    """
    from mmsa_ray.features import text_context, tokenize

    prep = _preprocessing(model_dir)
    fcfg, tok, d = prep.feature_config, prep.tokenizer, prep.decode_config
    n = len(batch["id"])
    keep = np.array([m in modalities for m in MODALITIES], dtype=np.float32)
    transcripts = [None if t is None else str(t) for t in batch["transcript"]]
    if "text" not in modalities:
        transcripts = [None] * n
    out = {
        "id": np.asarray(batch["id"], dtype=object),
        "split": np.asarray(batch["split"], dtype=object),
        "emotion_index": np.asarray(batch["emotion_index"], dtype=np.int64),
        "sentiment_index": np.asarray(batch["sentiment_index"], dtype=np.int64),
        "audio": np.zeros((n, *fcfg.mel_shape), np.float32),
        "mask": np.zeros((n, len(MODALITIES)), np.float32),
        "error": np.full(n, None, dtype=object),
    }
    if "video" in modalities:
        out["video"] = np.zeros((n, 3, d.num_frames, d.height, d.width), np.float32)
    contexts, futures = text_context(fcfg, n, batch.get("context"), batch.get("future"))
    tokens = tokenize(transcripts, tok, fcfg.max_text_length, contexts, futures)
    out["input_ids"], out["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
    out["mask"][:, MODALITIES.index("text")] = tokens["attention_mask"].any(axis=1)
    if decode_media:
        for i, path in enumerate(batch["path"]):
            if not path:
                continue  # no clip file: text (if any) only
            try:
                f = prep(str(path), transcripts[i], context=contexts[i], future=futures[i])
            except Exception as e:  # per clip: MediaError, or a feature error naming the clip
                out["error"][i] = f"{type(e).__name__}: {e}"
                out["mask"][i] = 0.0
                out["input_ids"][i] = tok.pad_token_id or 0
                out["attention_mask"][i] = 0
                continue
            out["audio"][i] = f["audio"]
            if "video" in out:
                out["video"][i] = f["video"]
            out["mask"][i] = f["mask"]
    out["mask"] *= keep
    out["audio"] *= out["mask"][:, MODALITIES.index("audio")].reshape(n, 1, 1, 1)
    return out


def raw_dataset(records, model_dir: str, modalities, staging_path: str, *, decode_batch_size: int = 8,
                cpus_per_task: float = 1.0, speaker_dropout: float = 0.0, seed: int = 0):
    """The Ray Dataset of raw model inputs (decode_and_featurize's columns) for `records`:
    read_parquet(staging manifest) -> CPU map_batches. Shared by featurize and end-to-end training.
    `speaker_dropout`: share of rows whose context goes without speaker markers (seeded)."""
    import ray

    from mmsa_ray.checkpoint import read_checkpoint_config
    from mmsa_ray.model import ModelConfig
    from mmsa_ray.train.meld import dialogue_context, unmarked_share, write_manifest

    records = list(records)
    modalities = tuple(m for m in MODALITIES if m in modalities)
    features = ModelConfig.from_dict(read_checkpoint_config(model_dir)["model"]).features
    text = "text" in modalities
    unmarked = unmarked_share(records, speaker_dropout, seed) if features.context_speakers and speaker_dropout else ()
    around = {later: dialogue_context(records, turns, features.context_speakers, later=later, unmarked=unmarked)
              if turns and text else None
              for later, turns in ((False, features.context_turns), (True, features.future_turns))}
    # small row groups: Ray Data reads one block per file fragment, and row groups let it split further
    write_manifest(records, staging_path, row_group_size=64, contexts=around[False], futures=around[True])
    n_blocks = max(1, min(64, -(-len(records) // max(1, decode_batch_size * 4))))
    ds = ray.data.read_parquet(staging_path, override_num_blocks=n_blocks)
    return ds.map_batches(
        decode_and_featurize,
        fn_kwargs={"model_dir": model_dir, "modalities": modalities, "decode_media": needs_media(modalities, records)},
        batch_size=decode_batch_size, batch_format="numpy", num_cpus=cpus_per_task,
    )


# ----------------------------------------------------------------------------- stage 2: encoders


def encode_backbones(model, batch: dict[str, np.ndarray], modalities, device: str = "cpu") -> dict[str, np.ndarray]:
    """Run the frozen trunks on raw inputs -> {"video_emb" [B,512], "text_emb" [B,hidden]} float32.

    Only the wanted modalities run: without video, the trunk sees a [B,3,1,1,1] zero clip
    (cheap; masked to 0 anyway). Text is cut to the batch's longest transcript (the
    pooling is a masked mean, so padding does not change it).
    """
    import torch

    n = len(batch["mask"])
    mask = torch.from_numpy(np.asarray(batch["mask"], np.float32)).to(device)
    am = np.asarray(batch["attention_mask"])
    length = max(1, int(am.sum(axis=1).max()) if am.size else 1)
    tb = {
        "mask": mask,
        "input_ids": torch.from_numpy(np.ascontiguousarray(np.asarray(batch["input_ids"])[:, :length])).to(device),
        "attention_mask": torch.from_numpy(np.ascontiguousarray(am[:, :length])).to(device),
    }
    if "video" in modalities and "video" in batch:
        tb["video"] = torch.from_numpy(np.asarray(batch["video"], np.float32)).to(device)
    else:
        tb["video"] = torch.zeros((n, 3, 1, 1, 1), device=device)
        tb["mask"] = mask * torch.tensor([m != "video" for m in MODALITIES], dtype=mask.dtype, device=device)
    if "text" not in modalities:
        tb["mask"] = tb["mask"] * torch.tensor([m != "text" for m in MODALITIES], dtype=mask.dtype, device=device)
    with torch.no_grad():
        emb = model.backbone_features(tb)
    return {k: v.float().cpu().numpy() for k, v in emb.items()}


class BackboneEncoder:
    """Ray Data actor: raw inputs -> the output rows (a pyarrow Table in OUTPUT_SCHEMA)."""

    def __init__(self, model_dir: str, modalities: tuple[str, ...], device: str | None = None,
                 audio_dtype: str = "float16"):
        import torch


        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = checkpoint.load(model_dir, map_location=self.device).eval()
        self.modalities = modalities
        self.audio_dtype = np.dtype(audio_dtype)

    def __call__(self, batch: dict[str, np.ndarray]):
        emb = encode_backbones(self.model, batch, self.modalities, self.device)
        return output_table(batch, emb, self.audio_dtype)


def _list_array(values: np.ndarray, pa_type):
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    n = values.shape[0]
    flat = values.reshape(n, -1)
    width = flat.shape[1]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)[: n + 1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.ravel(), type=pa_type))


def output_table(batch: dict[str, np.ndarray], emb: dict[str, np.ndarray], audio_dtype=np.float16):
    """Raw batch + embeddings -> a pyarrow Table of output rows (audio empty where absent)."""
    import pyarrow as pa

    n = len(batch["id"])
    mask = np.asarray(batch["mask"], np.float32)
    has_audio = mask[:, MODALITIES.index("audio")] > 0
    audio = np.asarray(batch["audio"], np.float32).reshape(n, -1).astype(audio_dtype)
    width = audio.shape[1]
    lengths = np.where(has_audio, width, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    pa_audio = pa.float16() if np.dtype(audio_dtype) == np.float16 else pa.float32()
    audio_arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(audio[has_audio].ravel(), type=pa_audio))
    return pa.table({
        "id": pa.array([str(x) for x in batch["id"]], pa.string()),
        "emotion_index": pa.array(np.asarray(batch["emotion_index"], np.int64)),
        "sentiment_index": pa.array(np.asarray(batch["sentiment_index"], np.int64)),
        "split": pa.array([str(x) for x in batch["split"]], pa.string()),
        "video_emb": _list_array(emb["video_emb"].astype(np.float32), pa.float32()),
        "text_emb": _list_array(emb["text_emb"].astype(np.float32), pa.float32()),
        "audio": audio_arr,
        "mask": _list_array(mask, pa.float32()),
        "error": pa.array([e if is_error(e) else None for e in batch["error"]], pa.string()),
    })


def is_error(value) -> bool:
    """An error cell holds a non-empty message (null may arrive as None or NaN after a pandas hop)."""
    return isinstance(value, str) and value != ""


def stack_audio(values, mel_shape=DEFAULT_MEL_SHAPE) -> np.ndarray:
    """A column of flattened log-mels (empty = absent) -> float32 [N, *mel_shape], zeros where absent."""
    n = len(values)
    out = np.zeros((n, *mel_shape), np.float32)
    size = int(np.prod(mel_shape))
    for i, v in enumerate(values):
        if v is not None and len(v):
            a = np.asarray(v, dtype=np.float32)
            if a.size != size:
                raise ValueError(f"audio row {i} has {a.size} values, expected {size} ({mel_shape})")
            out[i] = a.reshape(mel_shape)
    return out


# ----------------------------------------------------------------------------- the job


def featurize_records(records, model, split: str, *, modalities=MODALITIES, cache_dir: str | None = None,
                      actors: int = 1, gpus_per_actor: float = 0.0, batch_size: int = 32,
                      decode_batch_size: int = 8, audio_dtype: str = "float16",
                      reuse_superset: bool = True) -> FeaturizeResult:
    """Featurize `records` (one split) with `model`'s frozen encoders into the cache; reuse a complete one.

    A complete cache of all modalities is reused for any subset (reuse_superset); the
    consumer masks the modalities it does not use.

    Needs a running Ray (ray.init) unless the cache is complete. Returns where the Parquet is.
    """
    modalities = parse_modalities(modalities)
    records = list(records)
    if not records:
        raise ValueError(f"featurize: no records for split {split!r}")
    cache_root = Path(cache_dir or default_cache_dir()).expanduser().absolute()
    if reuse_superset and modalities != MODALITIES:  # features of all modalities serve any subset
        full = cache_root / cache_key(records, model, MODALITIES) / split
        if (full / COMPLETE).is_file():
            return _reused(full, split)
    key = cache_key(records, model, modalities)
    if (cache_root / key / split / COMPLETE).is_file():
        return _reused(cache_root / key / split, split)
    return _featurize_split(records, model, split, modalities, cache_root / key, actors=actors,
                            gpus_per_actor=gpus_per_actor, batch_size=batch_size,
                            decode_batch_size=decode_batch_size, audio_dtype=audio_dtype)


def _reused(out: Path, split: str) -> FeaturizeResult:
    """A complete cached split (<cache>/<key>/<split>), from its COMPLETE summary."""
    info = json.loads((out / COMPLETE).read_text())
    return FeaturizeResult(str(out), out.parent.name, split, info["rows"], info["errors"], reused=True)


def _featurize_split(records, model, split: str, modalities, base: Path, *, actors: int, gpus_per_actor: float,
                     batch_size: int, decode_batch_size: int, audio_dtype: str) -> FeaturizeResult:
    """Run the pipeline over one split's records and install its Parquet as <base>/<split> with COMPLETE
    (written to a temporary folder first, so a crash leaves no half cache)."""
    import ray

    from mmsa_ray import console

    t0 = time.time()
    model_dir = base / MODEL_DIR
    if not (model_dir / "config.json").is_file():
        checkpoint.save(model, str(model_dir))  # the exact frozen weights the actors use (atomic)
    staging = base / "_staging" / f"{split}-{uuid.uuid4().hex[:8]}.parquet"
    ds = raw_dataset(records, str(model_dir), modalities, str(staging), decode_batch_size=decode_batch_size)
    ds = ds.map_batches(
        BackboneEncoder,
        fn_constructor_kwargs={"model_dir": str(model_dir), "modalities": modalities,
                               "device": "cuda" if gpus_per_actor > 0 else "cpu", "audio_dtype": audio_dtype},
        batch_size=batch_size, batch_format="numpy", num_gpus=gpus_per_actor,
        num_cpus=1 if gpus_per_actor == 0 else 0.5,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
    )
    # Rows in record order, so the cache is deterministic: preserve_order on the dataset's own
    # context (a Dataset copies the global DataContext when it is created), and a sink that
    # keeps each write task's rows in order (Ray's own may reorder them within a file).
    ds.context.execution_options.preserve_order = True
    out = base / split
    tmp = base / f".{split}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with console.progress(f"featurize {split}", len(records), "clips", dataset=ds):
            ds.write_datasink(ordered_parquet_datasink(str(tmp), CACHE_ROWS_PER_FILE,
                                                       row_group_rows=CACHE_ROW_GROUP_ROWS))
        rows, errors = _written_rows(tmp, split, len(records))
        info = {"rows": rows, "errors": errors, "modalities": list(modalities), "seconds": time.time() - t0,
                "key": base.name}
        (tmp / COMPLETE).write_text(json.dumps(info, indent=1))
        if out.exists():  # an incomplete earlier attempt
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        staging.unlink(missing_ok=True)
    return FeaturizeResult(str(out), base.name, split, rows, errors, reused=False, seconds=time.time() - t0)


def _written_rows(path: Path, split: str, expected: int) -> tuple[int, list[dict]]:
    """The rows of the Parquet at `path` (one per record, else RuntimeError) and its error rows' {"id", "error"}."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(path), format="parquet").to_table(columns=["id", "error"])
    ids, messages = table["id"].to_pylist(), table["error"].to_pylist()
    errors = [{"id": i, "error": e} for i, e in zip(ids, messages, strict=True) if e]
    rows = table.num_rows
    if rows != expected:
        raise RuntimeError(f"featurize {split}: wrote {rows} rows for {expected} records")
    return rows, errors


def meld_records(meld_dir: str, split: str, limit: int | None = None):
    """MELD split -> records (first `limit` if given). Absent clips keep path None."""
    from mmsa_ray.train.meld import read_meld

    recs = read_meld(meld_dir, split).records
    return recs[:limit] if limit else recs


def featurize_meld(meld_dir: str, split: str, model, *, limit: int | None = None, **kw) -> FeaturizeResult:
    """`featurize_records` of one MELD split."""
    return featurize_records(meld_records(meld_dir, split, limit), model, split, **kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmsa-ray featurize",
                                description="Cache the frozen encoders' features of clips as Parquet (Ray Data).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--meld-dir", default=None, help="MELD root (default $MELD_DIR)")
    src.add_argument("--manifest", default=None,
                     help="a clip manifest (.parquet/.csv written by meld.write_manifest) instead of MELD")
    p.add_argument("--splits", default="train,dev",
                   help="MELD splits, comma separated (default train,dev); with --manifest the split column is used")
    p.add_argument("--limit", type=int, default=None, help="only the first N records of each split")
    p.add_argument("--modalities", default="text,audio,video",
                   help="modalities to featurize (default all); text alone opens no media file")
    p.add_argument("--checkpoint", default=None,
                   help="take the frozen encoders from this checkpoint instead of the model flags")
    model_args.add_model_args(p)
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random-initialised parts (video_weights none)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root (default $MMSA_CACHE_DIR or ~/ray_results/features)")
    p.add_argument("--actors", type=int, default=1, help="encoder actor pool size (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per encoder actor (default 0: CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per encoder batch (default 32)")
    p.add_argument("--decode-batch-size", type=int, default=8, help="clips per CPU decode task batch (default 8)")
    from mmsa_ray import console

    console.add_verbose_arg(p)
    args = p.parse_args(argv)
    console.setup(args.verbose)

    import ray

    from mmsa_ray.train.meld import default_meld_dir, read_manifest

    if args.manifest:
        recs = read_manifest(args.manifest)
        by_split: dict[str, list] = {}
        for r in recs:
            by_split.setdefault(r.split, []).append(r)
        jobs = {s: (v[: args.limit] if args.limit else v) for s, v in by_split.items()}
    else:
        meld_dir = args.meld_dir or default_meld_dir()
        if not meld_dir:
            p.error("give --meld-dir or --manifest (or set $MELD_DIR)")
        splits = [x.strip() for x in args.splits.split(",") if x.strip()]
        jobs = {s: meld_records(meld_dir, s, args.limit) for s in splits}
    if args.checkpoint:  # after the records: a wrong path fails before the encoders load
        model = checkpoint.load(args.checkpoint)
    else:
        model = model_args.build_model(model_args.model_config_from_args(args), args.init_seed)
    started = console.init_ray()
    try:
        for split, recs in jobs.items():
            res = featurize_records(recs, model, split, modalities=args.modalities, cache_dir=args.cache_dir,
                                    actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                                    batch_size=args.batch_size, decode_batch_size=args.decode_batch_size)
            print(res.summary(), flush=True)
    finally:
        if started:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
