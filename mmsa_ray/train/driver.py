"""Train the model data-parallel with Ray Train (TorchTrainer, DDP; gloo on CPU, NCCL on GPU):
the driver and `mmsa-ray train`. The per-worker loop and its TrainConfig: mmsa_ray.train.loop.

    MELD split ─► featurize (Ray Data, cached Parquet of frozen-encoder outputs)   cached mode (default)
              └─► decode + features streamed by Ray Data every epoch               --end-to-end / --finetune
    ─► TorchTrainer: each worker iterates its shard (get_dataset_shard("train").iter_torch_batches)
       and trains the trainable parts (projections, audio encoder, fusion, heads; plus the
       encoders named by --finetune), evaluates on the whole dev set, reports metrics and a
       checkpoint every epoch ─► best checkpoint (dev score, --select-on) ─► --output ─► dev report

The driver computes the class weights (--class-weighting), builds the datasets, starts the
trainer, copies the best checkpoint to --output (compact with --compact) and writes its dev
report. A checkpoint directory holds ``model/`` (the `mmsa_ray.checkpoint.save` format)
and the training state: ``train_state.json`` (epoch, step, early-stopping state, history,
optimizer hyper-parameters) and ``optimizer.safetensors`` (AdamW moments): no pickle.
A run is resumable: a worker failure restarts the worker group from the latest
checkpoint (``--max-failures``), and running the same command again with the same
``--name`` / ``--storage-path`` continues where it stopped (Ray Train V2 semantics).
Metrics go to stdout (rank 0) and TensorBoard (``<storage>/<name>/tensorboard``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mmsa_ray import checkpoint
from mmsa_ray.calibrate import calibration_record
from mmsa_ray.labels import parse_modalities
from mmsa_ray.train.datasets import cached_datasets, streamed_datasets
from mmsa_ray.train.loop import HEADS, SCORE, SELECT_ON, TrainConfig, WorkerConfig, train_loop

# ----------------------------------------------------------------------------- helpers


CLASS_WEIGHTINGS = ("none", "inverse", "sqrt")


def class_weights(labels: np.ndarray, num_classes: int, mode: str = "inverse") -> np.ndarray:
    """Loss weights [K] normalised to mean 1 over present classes (absent classes: 1).

    mode: "inverse" (1/frequency: rare classes count as much as common ones, for macro
    F1), "sqrt" (1/sqrt(frequency), half way) or "none" (all 1: the loss follows the data's
    own class balance, which is what weighted F1 rewards)."""
    if mode not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {list(CLASS_WEIGHTINGS)}, got {mode!r}")
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    power = {"none": 0.0, "sqrt": 0.5, "inverse": 1.0}[mode]
    w = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 1.0)
    return (w / w[counts > 0].mean() if (counts > 0).any() else w).astype(np.float32)


def _history(result_checkpoint) -> list | None:
    """Per-epoch metrics kept in a Ray Train checkpoint's train_state.json."""
    if result_checkpoint is None:
        return None
    with result_checkpoint.as_directory() as d:
        return json.loads((Path(d) / "train_state.json").read_text()).get("history")


# ----------------------------------------------------------------------------- the driver


def reset_trainable(model, seed: int) -> None:
    """Re-initialise the trainable parts (projections, audio encoder, fusion, heads) from `seed`,
    leaving the frozen (or to-be-finetuned) backbones as built."""
    import torch

    from mmsa_ray.model import FROM_SCRATCH

    torch.manual_seed(seed)
    for m in (getattr(model, name) for name in FROM_SCRATCH):
        if m is None:  # fusion="late" has no fusion layer or fused heads
            continue
        for sub in m.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


@dataclass
class JobConfig:
    """Where and how the job runs (flags)."""

    meld_dir: str = ""
    output: str = "checkpoint"
    storage_path: str | None = None
    name: str | None = None
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    max_failures: int = 1
    limit: int | None = None  # first N records of each split
    cache_dir: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    featurize_batch_size: int = 32
    num_to_keep: int = 2
    report_dir: str | None = None  # default <output>/report
    compact: bool = False  # write --output with save(compact=True): only what differs from the pretrained encoders


@dataclass
class _RunDirs:
    """Where a run writes: Ray Train's storage, the run's own folder in it, and the feature cache."""

    name: str
    storage: str
    run_dir: str  # <storage>/<name>: checkpoints, TensorBoard, the initial model
    cache_dir: str


def run(job: JobConfig, cfg: TrainConfig, model_config) -> dict:
    """Featurize (cached mode), train with TorchTrainer, copy the best model to job.output,
    evaluate it on dev and write the report. Returns {"result", "best_metrics", "report", ...}."""
    import ray

    from mmsa_ray.train import featurize

    if cfg.select_on not in SELECT_ON:  # here, not at the end of the first epoch
        raise ValueError(f"select_on must be one of {list(SELECT_ON)}, got {cfg.select_on!r}")
    t_start = time.time()
    ray.data.DataContext.get_current().enable_progress_bars = False
    dirs = _run_dirs(job)
    cfg.modalities = parse_modalities(cfg.modalities)
    cfg.end_to_end = cfg.end_to_end or bool(cfg.finetune)
    model, init_model = initial_model(model_config, cfg, dirs.run_dir)

    records = {split: featurize.meld_records(job.meld_dir, split, job.limit) for split in ("train", "dev")}
    mel_shape = model_config.features.mel_shape
    info: dict = {"run_dir": dirs.run_dir, "mode": "end-to-end" if cfg.end_to_end else "cached"}
    if cfg.end_to_end:
        datasets = streamed_datasets(records, init_model, cfg, dirs.run_dir)
        bad = {"train": set(), "dev": set()}
    else:
        datasets, bad = cached_datasets(records, model, cfg.modalities, job, dirs.cache_dir, info)
    worker = _worker_config(cfg, [r for r in records["train"] if r.id not in bad["train"]], job.num_workers,
                            init_model, dirs.run_dir, mel_shape)
    trainer = _trainer(job, dirs, worker, datasets)
    t_fit = time.time()
    info["before_fit_s"] = t_fit - t_start
    result = trainer.fit()
    info["fit_s"] = time.time() - t_fit
    history = _history(result.checkpoint) or []
    best, best_metrics = _best_checkpoint(result, dirs.run_dir)
    out = _install_best(best, job.output, job.compact)
    (out.parent / f"{out.name}.train.json").write_text(json.dumps(
        {"best_checkpoint": best.path, "best_metrics": best_metrics, "train_config": asdict(cfg), "job": asdict(job),
         "info": info, "history": history}, indent=1, default=str))

    report, report_dir = _dev_report(out, records["dev"], job, cfg, dirs, mel_shape, best_metrics)
    info["total_s"] = time.time() - t_start
    info["report_s"] = info["total_s"] - info["fit_s"] - info["before_fit_s"]
    return {"result": result, "history": history, "best_metrics": best_metrics, "report": report,
            "report_dir": str(report_dir), "output": str(out), "info": info}


def _run_dirs(job: JobConfig) -> _RunDirs:
    """The run's folders (made): <storage>/<name>, name timestamped unless given (a given name resumes)."""
    from mmsa_ray.train import featurize

    storage = os.path.abspath(os.path.expanduser(job.storage_path or "~/ray_results"))
    name = job.name or f"mmsa_train_{time.strftime('%Y%m%d_%H%M%S')}"
    run_dir = os.path.join(storage, name)
    os.makedirs(run_dir, exist_ok=True)
    return _RunDirs(name, storage, run_dir, job.cache_dir or featurize.default_cache_dir(storage))


def initial_model(model_config, cfg: TrainConfig, run_dir: str):
    """The model every worker starts from, saved to <run_dir>/init_model: frozen trunks as built with seed 0
    (whatever --seed), the trainable parts from cfg.init_seed (cfg.seed when None). Returns the model and
    that path."""
    from mmsa_ray.train import model_args

    model = model_args.build_model(model_config, init_seed=0)
    reset_trainable(model, cfg.seed if cfg.init_seed is None else cfg.init_seed)
    init_model = os.path.join(run_dir, "init_model")
    checkpoint.save(model, init_model)
    return model, init_model


def _worker_config(cfg: TrainConfig, train_recs: list, workers: int, init_model: str, run_dir: str,
                   mel_shape) -> WorkerConfig:
    """The workers' config: `cfg` plus the class weights and steps per epoch of the clips that train."""
    labels = {"emotion": np.array([r.emotion_index for r in train_recs]),
              "sentiment": np.array([r.sentiment_index for r in train_recs])}
    n_train = len(labels["emotion"])
    return WorkerConfig(
        train=replace(cfg), init_model=init_model, run_dir=run_dir, mel_shape=tuple(mel_shape),
        class_weights={h: class_weights(labels[h], len(HEADS[h]), cfg.class_weighting).tolist() for h in HEADS},
        steps_per_epoch=max(1, math.ceil(n_train / workers / cfg.batch_size)),
    )


def _trainer(job: JobConfig, dirs: _RunDirs, worker: WorkerConfig, datasets: dict):
    """The TorchTrainer: `train_loop` on job.num_workers workers, the train set split among them, the dev set
    whole on each; keeps the job.num_to_keep best checkpoints by dev score."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mmsa_ray import console

    cpus = job.cpus_per_worker if job.cpus_per_worker is not None else (1.0 if job.use_gpu else 0.5)
    resources = {"CPU": cpus} | ({"GPU": 1} if job.use_gpu else {})
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = worker.train.deterministic
    return TorchTrainer(
        train_loop,
        train_loop_config=worker.loop_config(),
        scaling_config=ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=dirs.name, storage_path=dirs.storage,
            failure_config=FailureConfig(max_failures=job.max_failures),
            logging_config=console.train_logging_config(),
            checkpoint_config=CheckpointConfig(num_to_keep=job.num_to_keep, checkpoint_score_attribute=SCORE,
                                               checkpoint_score_order="max"),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest),
    )


def _best_checkpoint(result, run_dir: str):
    """The best kept checkpoint by dev score and its metrics (else the last one's)."""
    # the checkpoint and its metrics from one pair (matching them by path could fall back to the
    # last epoch's metrics and name the wrong best epoch)
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if SCORE in m]
    best, best_metrics = max(kept, key=lambda cm: cm[1][SCORE]) if kept else (result.checkpoint, result.metrics)
    if best is None:
        raise RuntimeError(f"training produced no checkpoint (run dir {run_dir})")
    return best, best_metrics


def _install_best(best, output: str, compact: bool) -> Path:
    """Copy the best checkpoint's model to `output` (replacing only an earlier checkpoint), compact if asked."""
    from mmsa_ray.checkpoint import install_checkpoint, refuse_non_checkpoint

    out = Path(output).absolute()
    refuse_non_checkpoint(out)  # before the copy: never replace a directory that is not a checkpoint
    with best.as_directory() as d:
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(d) / "model", tmp)
        install_checkpoint(tmp, out)
    if compact:  # the report then scores the compact weights themselves (fp16 layers)
        checkpoint.save(checkpoint.load(out), out, compact=True)
    return out


def _dev_report(out: Path, dev_recs: list, job: JobConfig, cfg: TrainConfig, dirs: _RunDirs, mel_shape,
                best_metrics: dict):
    """The best model on dev, through the cached featurization of its own encoders: its calibration fitted
    and stored in the checkpoint, the report written to job.report_dir (default <output>_report). Returns the
    report and its folder."""
    from mmsa_ray.train import evaluate, featurize

    best_model = checkpoint.load(out)
    dev_feat = featurize.featurize_records(dev_recs, best_model, "dev", modalities=cfg.modalities,
                                           cache_dir=dirs.cache_dir, actors=job.actors,
                                           gpus_per_actor=job.gpus_per_actor, batch_size=job.featurize_batch_size)
    data, errors = evaluate.load_features(dev_feat.path, cfg.modalities, mel_shape)
    calibration = None
    if len(data):  # calibrated on dev, as `mmsa-ray calibrate` does: label, serve and evaluate then apply it
        calibration = calibration_record(evaluate.predict_logits(best_model, data),
                                         {"emotion": data.emotion, "sentiment": data.sentiment},
                                         fitted_on=f"MELD dev ({len(data)} clips)")
        checkpoint.write_calibration(out, calibration)
    report = evaluate.evaluate(best_model, data, calibration=calibration)
    report.update(checkpoint=str(out), data=f"{job.meld_dir} dev", modalities=",".join(cfg.modalities), errors=errors,
                  best_epoch=best_metrics.get("epoch"), train_run=dirs.run_dir)
    report_dir = Path(job.report_dir or out.parent / f"{out.name}_report")
    evaluate.write_report(report, report_dir, f"dev report of {out.name}")
    return report, report_dir


def time_summary(info: dict, history: list[dict]) -> str:
    """Where a run's wall time went: set-up, each epoch's parts (rank 0), Ray Train's own share, the report."""
    keys = {"data": "data_s", "forward": "forward_s", "backward": "backward_s", "dev": "dev_time_s"}
    parts = {k: sum(h.get(key, 0.0) for h in history) for k, key in keys.items()}
    epochs = sum(h.get("epoch_time_s", 0.0) for h in history)
    return (f"time {info['total_s']:.0f} s: set-up {info['before_fit_s']:.0f} s (Ray start, featurize) | "
            f"training {info['fit_s']:.0f} s = {len(history)} epochs {epochs:.0f} s (waiting for data "
            f"{parts['data']:.0f} s: Ray Data read + tokenize; forward {parts['forward']:.0f} s; backward + step "
            f"{parts['backward']:.0f} s; dev {parts['dev']:.0f} s) + Ray Train start-up, checkpoints and reports "
            f"{info['fit_s'] - epochs:.0f} s | best model + dev report {info['report_s']:.0f} s")


# ----------------------------------------------------------------------------- mmsa-ray train


def build_parser() -> argparse.ArgumentParser:
    """`mmsa-ray train`'s flags, in groups; the training defaults are TrainConfig's."""
    from mmsa_ray import console
    from mmsa_ray.train import model_args

    p = argparse.ArgumentParser(prog="mmsa-ray train",
                                description="Train the model data-parallel on Ray Train (cached features by default).")
    _add_data_args(p.add_argument_group("data and workers"))
    _add_optimizer_args(p.add_argument_group("optimisation"), TrainConfig())
    model_args.add_model_args(p.add_argument_group("model"))
    _add_output_args(p.add_argument_group("outputs, storage and the feature cache"))
    p.add_argument("--pid-dir", default=None, help=argparse.SUPPRESS)
    console.add_verbose_arg(p)
    return p


def _add_data_args(g) -> None:
    g.add_argument("--meld-dir", default=None,
                   help="MELD root with {train,dev}_sent_emo.csv and clip folders (default $MELD_DIR)")
    g.add_argument("--modalities", default="text,audio,video",
                   help="modalities to train on, any subset of text,audio,video (others masked to 0)")
    g.add_argument("--limit", type=int, default=None,
                   help="use only the first N records of train and of dev (quick runs)")
    g.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (data-parallel DDP; default 2)")
    g.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL, bf16 autocast)")
    g.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs reserved per worker (default 0.5 on CPU, 1 with GPUs)")
    g.add_argument("--end-to-end", action="store_true",
                   help="stream raw clips (decode + features each epoch) instead of cached features")
    g.add_argument("--finetune", default="",
                   help="encoders to unfreeze, comma separated: text,video (implies --end-to-end)")


def _add_optimizer_args(g, d: TrainConfig) -> None:
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"batch size per worker (default {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"learning rate of fusion and heads (default {d.lr:g})")
    g.add_argument("--encoder-lr", type=float, default=d.encoder_lr,
                   help=f"learning rate of the projections and the audio encoder (default {d.encoder_lr:g})")
    g.add_argument("--backbone-lr", type=float, default=d.backbone_lr,
                   help=f"learning rate of encoders unfrozen by --finetune (default {d.backbone_lr:g})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay:g})")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help=f"cross-entropy label smoothing (default {d.label_smoothing:g})")
    g.add_argument("--class-weighting", default=d.class_weighting, choices=list(CLASS_WEIGHTINGS),
                   help="loss weights per class: none (serves weighted F1), sqrt or inverse frequency "
                        f"(serve macro F1) (default {d.class_weighting})")
    g.add_argument("--modality-dropout", type=float, default=d.modality_dropout,
                   help="probability of hiding a present modality per sample, so that clips missing one still "
                        f"predict well (never all; default {d.modality_dropout:g})")
    g.add_argument("--speaker-dropout", type=float, default=d.speaker_dropout,
                   help="with --context-speakers: share of training rows read without [same]/[other] markers "
                        f"(default {d.speaker_dropout:g})")
    g.add_argument("--no-future-truncation", dest="truncate_future", action="store_false",
                   help="with --future-turns: train on every row's later turns whole (default: a random number "
                        "of them each step, down to none, so rows without any are read as well)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a gain in the --select-on score "
                        f"(0 = never; default {d.patience})")
    g.add_argument("--select-on", default=d.select_on, choices=SELECT_ON,
                   help="dev weighted F1 that picks the best epoch and early-stops: emotion, sentiment or the "
                        f"mean of both (default {d.select_on})")
    g.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the trainable parts' init, shuffling and dropout (default {d.seed})")
    g.add_argument("--init-seed", type=int, default=d.init_seed,
                   help="seed of the trainable parts' init alone (default: --seed); runs that share it start "
                        "from one point and can be averaged by `mmsa-ray average`")


def _add_output_args(g) -> None:
    g.add_argument("--output", default="checkpoint",
                   help="directory for the best model (checkpoint.save format; default ./checkpoint)")
    g.add_argument("--report-dir", default=None, help="directory for the dev report (default <output>_report)")
    g.add_argument("--compact", action="store_true",
                   help="store --output compactly: only the weights that differ from the pretrained encoders "
                        "(fine-tuned layers in float16); how the shipped starter checkpoint is made")
    g.add_argument("--storage-path", default=None,
                   help="Ray Train storage (checkpoints, TensorBoard; default ~/ray_results)")
    g.add_argument("--name", default=None,
                   help="run name; rerunning with the same name resumes it (default: timestamped)")
    g.add_argument("--max-failures", type=int, default=1,
                   help="worker failures to recover from the last checkpoint (default 1)")
    g.add_argument("--cache-dir", default=None,
                   help="feature cache root (default <storage>/features or $MMSA_CACHE_DIR)")
    g.add_argument("--actors", type=int, default=1, help="featurize: encoder actor pool size (default 1)")
    g.add_argument("--gpus-per-actor", type=float, default=0.0, help="featurize: GPUs per encoder actor (default 0)")
    g.add_argument("--featurize-batch-size", type=int, default=32,
                   help="featurize: clips per encoder batch (default 32)")


def _configs_from_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[JobConfig, TrainConfig, object]:
    """The job, training and model configs of parsed flags; a bad flag is `p.error` (exit 2) before any work."""
    from mmsa_ray.checkpoint import refuse_non_checkpoint
    from mmsa_ray.train import model_args
    from mmsa_ray.train.meld import check_meld_root, default_meld_dir

    if args.num_workers < 1:
        p.error(f"--num-workers must be >= 1, got {args.num_workers}")
    for flag in ("modality_dropout", "speaker_dropout"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            p.error(f"--{flag.replace('_', '-')} is a share of rows, from 0 to 1; got {getattr(args, flag):g}")
    try:  # fail before any work, not after training
        refuse_non_checkpoint(Path(args.output).absolute())
    except FileExistsError as e:
        p.error(f"--output: {e}")
    meld_dir = args.meld_dir or default_meld_dir()
    if not meld_dir:
        p.error("--meld-dir is required (or set $MELD_DIR)")
    try:  # before Ray starts and the encoders load
        check_meld_root(meld_dir, ("train", "dev"))
    except FileNotFoundError as e:
        p.error(f"--meld-dir: {e}")
    named = {x.strip() for x in args.finetune.split(",") if x.strip()}
    finetune = tuple(m for m in ("text", "video") if m in named)
    unknown = named - {"text", "video"}
    if unknown:
        p.error(f"--finetune takes text and/or video, got {sorted(unknown)}")
    modalities = parse_modalities(args.modalities)
    model_config = model_args.model_config_from_args(args, freeze_text="text" not in finetune,
                                                    freeze_video="video" not in finetune, modalities=modalities)
    cfg = TrainConfig(
        modalities=modalities, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        encoder_lr=args.encoder_lr, backbone_lr=args.backbone_lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, class_weighting=args.class_weighting,
        modality_dropout=args.modality_dropout, truncate_future=args.truncate_future,
        speaker_dropout=args.speaker_dropout, patience=args.patience, select_on=args.select_on, seed=args.seed,
        init_seed=args.init_seed,
        end_to_end=args.end_to_end, finetune=finetune, pid_dir=args.pid_dir,
    )
    job = JobConfig(meld_dir=meld_dir, output=args.output, storage_path=args.storage_path, name=args.name,
                    num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                    max_failures=args.max_failures, limit=args.limit, cache_dir=args.cache_dir, actors=args.actors,
                    gpus_per_actor=args.gpus_per_actor, featurize_batch_size=args.featurize_batch_size,
                    report_dir=args.report_dir, compact=args.compact)
    return job, cfg, model_config


def main(argv: list[str] | None = None) -> int:
    from mmsa_ray import console

    p = build_parser()
    args = p.parse_args(argv)
    console.setup(args.verbose)
    job, cfg, model_config = _configs_from_args(p, args)
    import ray

    from mmsa_ray.train.evaluate import summary_line

    started = console.init_ray()
    try:
        res = run(job, cfg, model_config)
    finally:
        if started:
            ray.shutdown()
    r = res["report"]
    print(f"[train] best epoch {res['best_metrics'].get('epoch')}; model -> {res['output']}; "
          f"report -> {res['report_dir']}/report.md")
    print(f"[train] dev: {summary_line(r)}")
    print(f"[train] {time_summary(res['info'], res['history'])}")
    print(f"dev weighted F1: emotion {r['heads']['emotion']['weighted_f1']:.4f}, "
          f"sentiment {r['heads']['sentiment']['weighted_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
