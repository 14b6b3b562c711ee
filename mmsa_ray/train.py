"""Train the model data-parallel with Ray Train (TorchTrainer, DDP; gloo on CPU, NCCL on GPU).

    MELD split ─► featurize (Ray Data, cached Parquet of frozen-encoder outputs)   cached mode (default)
              └─► decode + features streamed by Ray Data every epoch               --end-to-end / --finetune
    ─► TorchTrainer: each worker iterates its shard (get_dataset_shard("train").iter_torch_batches)
       and trains the trainable parts (projections, audio encoder, fusion, heads; plus the
       encoders named by --finetune), evaluates on the whole dev set, reports metrics and a
       checkpoint every epoch ─► best checkpoint (dev emotion weighted F1) ─► --output ─► dev report

Per epoch: class-weighted cross-entropy with label smoothing on both heads (plus each
modality's own heads, on the clips that have that modality), modality dropout, AdamW
(heads at --lr, projections/audio encoder at --encoder-lr, unfrozen backbones at
--backbone-lr), warm-up + cosine schedule per step, bf16 autocast on GPU only.

A checkpoint directory holds ``model/`` (the `MultimodalSentimentModel.save` format) and
the training state: ``train_state.json`` (epoch, step, early-stopping state, history,
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
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmsa_ray.features import DEFAULT_MEL_SHAPE
from mmsa_ray.labels import EMOTIONS, MODALITIES, SENTIMENTS, parse_modalities

SCORE = "dev_score"  # what selects the best epoch and early-stops: see TrainConfig.select_on
SELECT_ON = ("emotion", "sentiment", "mean")
HEADS = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}


@dataclass
class TrainConfig:
    """Hyper-parameters and job settings; every field is a `mmsa-ray train` flag."""

    modalities: tuple[str, ...] = MODALITIES  # used modalities; the others are masked out
    epochs: int = 10  # maximum epochs
    batch_size: int = 32  # per worker
    lr: float = 1e-3  # fusion + heads
    encoder_lr: float = 5e-4  # projections + audio encoder
    backbone_lr: float = 2e-5  # unfrozen backbones (--finetune)
    weight_decay: float = 0.01  # AdamW
    warmup_frac: float = 0.05  # share of steps with linear warm-up, then cosine to 0
    label_smoothing: float = 0.1
    class_weighting: str = "none"  # "none" serves weighted F1 (MELD's metric); "inverse" / "sqrt" frequency weights trade it for macro F1
    aux_weight: float = 0.5  # weight of the per-modality heads' loss
    modality_dropout: float = 0.2  # per sample, per present modality; never drops all (so a clip missing a modality still predicts well)
    patience: int = 3  # epochs without dev improvement before stopping (0 = never)
    select_on: str = "mean"  # dev weighted F1 that picks the best epoch: "emotion", "sentiment" or "mean" of the two heads
    seed: int = 0
    end_to_end: bool = False  # stream raw clips (decode+features) instead of cached features
    finetune: tuple[str, ...] = ()  # encoders to unfreeze ("text", "video"); implies end_to_end
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer (0 = record order)
    length_pool: int = 8  # fine-tuned text: batches read at once and regrouped by token count (less padding; 1 = off)
    deterministic: bool = False  # Ray Data preserves row order (reproducible runs; slower streaming)
    pid_dir: str | None = None  # where each worker writes rank<r>.pid (tests kill one)


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


def selection_score(metrics: dict, select_on: str) -> float:
    """The dev score of one epoch: a head's weighted F1, or the mean of both (MELD is scored on both)."""
    if select_on == "mean":
        return (metrics["dev_emotion_weighted_f1"] + metrics["dev_sentiment_weighted_f1"]) / 2
    return metrics[f"dev_{select_on}_weighted_f1"]


def lr_factor(step: int, total: int, warmup_frac: float) -> float:
    """Linear warm-up for warmup_frac of `total` steps, then cosine from 1 to 0.01."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def to_tensors(batch: dict[str, np.ndarray], modalities=MODALITIES, mel_shape=DEFAULT_MEL_SHAPE) -> dict:
    """A numpy batch (cached feature rows or raw decode_and_featurize rows) -> dict of CPU tensors.

    Cached: video_emb [B,512], text_emb [B,H], audio [B,1,64,300] (empty list = zeros).
    Raw: video [B,3,T,H,W], input_ids/attention_mask [B,L], audio [B,1,64,300].
    Always: mask [B,3] (restricted to `modalities`), emotion/sentiment [B] int64.
    """
    import torch

    from mmsa_ray.featurize import stack_audio

    def stack(v, dtype):
        v = np.asarray(v)
        if v.dtype == object:
            v = np.stack([np.asarray(x) for x in v])
        return torch.from_numpy(np.array(v, dtype=dtype, copy=True))  # writable, contiguous

    n = len(batch["emotion_index"])
    keep = torch.tensor([m in modalities for m in MODALITIES], dtype=torch.float32)
    out = {
        "mask": stack(batch["mask"], np.float32).reshape(n, len(MODALITIES)) * keep,
        "emotion": stack(batch["emotion_index"], np.int64),
        "sentiment": stack(batch["sentiment_index"], np.int64),
    }
    if "video_emb" in batch:
        out["video_emb"] = stack(batch["video_emb"], np.float32).reshape(n, -1)
        out["text_emb"] = stack(batch["text_emb"], np.float32).reshape(n, -1)
        audio = batch["audio"]
        if np.asarray(audio).dtype == object or np.asarray(audio).ndim == 2:
            out["audio"] = torch.from_numpy(stack_audio(list(audio), mel_shape))
        else:
            out["audio"] = stack(audio, np.float32)
    else:
        am = np.asarray(batch["attention_mask"])
        length = max(1, int(am.sum(axis=1).max()) if am.size else 1)  # dynamic padding: the mean pooling ignores pads
        out["input_ids"] = stack(np.asarray(batch["input_ids"])[:, :length], np.int64)
        out["attention_mask"] = stack(am[:, :length], np.int64)
        out["audio"] = stack(batch["audio"], np.float32)
        if "video" in batch:
            out["video"] = stack(batch["video"], np.float32)
        else:  # video not used: a tiny zero clip (masked out; the trunk output is zeroed)
            out["video"] = torch.zeros((n, 3, 1, 1, 1))
    return out


def _collate_base():
    from ray.data.collate_fn import NumpyBatchCollateFn

    return NumpyBatchCollateFn


class ToTensors(_collate_base()):
    """iter_torch_batches collate_fn: `to_tensors` with fixed modalities and log-mel shape."""

    def __init__(self, modalities, mel_shape):
        super().__init__()
        self.modalities, self.mel_shape = tuple(modalities), tuple(mel_shape)

    def __call__(self, batch):
        return to_tensors(batch, self.modalities, self.mel_shape)


def length_bucketed(batches, batch_size: int, generator=None):
    """Regroup tensor batches of token ids into batches of similar length, then trim padding.

    Each incoming batch (a pool of several training batches, already shuffled) is sorted by
    token count, cut into `batch_size` rows and the pieces yielded in random order, each
    cut to its own longest row. On MELD with dialogue context this halves the padded
    tokens the text encoder runs on (its cost is linear in them). Batches without token
    ids (cached features) pass through unchanged. The number of batches depends only on
    the pool sizes, so data-parallel workers with equal shards take equal steps.
    """
    import torch

    for pool in batches:
        if "attention_mask" not in pool:
            yield pool
            continue
        lengths = pool["attention_mask"].sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        pieces = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for j in torch.randperm(len(pieces), generator=generator).tolist():
            batch = {k: v[pieces[j]] for k, v in pool.items()}
            longest = max(1, int(batch["attention_mask"].sum(dim=1).max()))
            batch["input_ids"], batch["attention_mask"] = batch["input_ids"][:, :longest], batch["attention_mask"][:, :longest]
            yield batch


def drop_error_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data map_batches: keep the rows whose error is null."""
    from mmsa_ray.featurize import is_error

    keep = np.array([not is_error(e) for e in batch["error"]], dtype=bool)
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def modality_dropout(mask, p: float, generator=None):
    """Zero each present modality of each row with probability p, never all of a row's."""
    import torch

    if p <= 0:
        return mask
    drop = (torch.rand(mask.shape, generator=generator) < p).to(mask.device) & (mask > 0)
    new = torch.where(drop, torch.zeros_like(mask), mask)
    empty = (new.sum(dim=1) == 0) & (mask.sum(dim=1) > 0)
    return torch.where(empty.unsqueeze(1), mask, new)


def _save_state(d: Path, optimizer, state: dict) -> None:
    """optimizer moments -> optimizer.safetensors, everything else -> train_state.json."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous() if hasattr(v, "detach") else __import__("torch").tensor(v)
    save_file(tensors, str(d / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
    (d / "train_state.json").write_text(json.dumps({**state, "param_groups": groups}, indent=1, default=float))


def _load_state(d: Path, optimizer) -> dict:
    from safetensors.torch import load_file

    state = json.loads((d / "train_state.json").read_text())
    tensors = load_file(str(d / "optimizer.safetensors"))
    per: dict[int, dict] = {}
    for name, t in tensors.items():
        pid, k = name.split(".", 1)
        per.setdefault(int(pid), {})[k] = t
    optimizer.load_state_dict({"state": per, "param_groups": state.pop("param_groups")})
    return state


def _confusions(logits, labels, k):
    import torch

    pred = logits.argmax(dim=1)
    return torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k)


# ----------------------------------------------------------------------------- the worker loop


def train_loop(config: dict) -> None:
    """Ray Train per-worker function. config: TrainConfig fields plus init_model, class weights,
    steps_per_epoch, mel_shape, run_dir."""
    import torch
    import torch.distributed as dist
    from torch import nn

    import ray.train
    import ray.train.torch

    from mmsa_ray.evaluate import metrics_from_confusion
    from mmsa_ray.model import MultimodalSentimentModel

    cfg = TrainConfig(**{k: config[k] for k in TrainConfig.__dataclass_fields__})
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    if cfg.pid_dir:
        Path(cfg.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))

    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    ckpt_dir = None
    if checkpoint is not None:
        ckpt_dir = Path(tempfile.mkdtemp(prefix="mmsa_resume_"))
        checkpoint.to_directory(str(ckpt_dir))
        model = MultimodalSentimentModel.load(ckpt_dir / "model")
    else:
        model = MultimodalSentimentModel.load(config["init_model"])
    torch.manual_seed(cfg.seed * 1000 + rank)
    model.train()
    model.to(device)
    ddp = ray.train.torch.prepare_model(model) if world > 1 else model
    lrs = {"heads": cfg.lr, "encoders": cfg.encoder_lr, "backbones": cfg.backbone_lr}
    groups = [{"params": g["params"], "lr": lrs[g["name"]], "name": g["name"], "base_lr": lrs[g["name"]]} for g in model.param_groups()]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if ckpt_dir is not None:
        state.update(_load_state(ckpt_dir, optimizer))
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        if rank == 0:
            print(f"[train] resumed from the checkpoint of epoch {state['epoch']}", flush=True)
    for g in optimizer.param_groups:
        g["base_lr"] = lrs[g["name"]]

    weights = {h: torch.tensor(config["class_weights"][h], dtype=torch.float32, device=device) for h in HEADS}
    ce = {h: nn.CrossEntropyLoss(weight=weights[h], label_smoothing=cfg.label_smoothing) for h in HEADS}
    ce_none = {h: nn.CrossEntropyLoss(weight=weights[h], label_smoothing=cfg.label_smoothing, reduction="none") for h in HEADS}
    total_steps = max(1, config["steps_per_epoch"] * cfg.epochs)
    use_bf16 = device.type == "cuda"
    mel_shape = tuple(config["mel_shape"])
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(config["run_dir"], "tensorboard"))
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * state["epoch"])

    def forward(batch):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            return ddp(batch)

    def loss_of(out, batch, mask):
        loss = sum(ce[h](out[h].float(), batch[h]) for h in HEADS)
        if cfg.aux_weight > 0:
            for i, m in enumerate(MODALITIES):
                present = mask[:, i]  # 0 for unused modalities: their heads stay in the graph (DDP) at no loss
                for h in HEADS:
                    per = ce_none[h](out["per_modality"][m][h].float(), batch[h])
                    loss = loss + cfg.aux_weight * (per * present).sum() / present.sum().clamp(min=1) / len(cfg.modalities)
        return loss

    train_shard = ray.train.get_dataset_shard("train")
    dev_shard = ray.train.get_dataset_shard("dev")
    collate = ToTensors(cfg.modalities, mel_shape)
    dev_batches = None  # the dev set is small and fixed: read it once, evaluate it every epoch

    t_loop, first_epoch = time.time(), state["epoch"]
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.time()
        model.train()
        sums = torch.zeros(2, dtype=torch.float64)  # loss*n, n
        conf = {h: torch.zeros(len(HEADS[h]), len(HEADS[h]), dtype=torch.int64) for h in HEADS}
        # Only where the text encoder trains: frozen end-to-end runs must see the batches the
        # cached mode sees (they train the same model), and cached rows have no tokens.
        pool = max(1, cfg.length_pool) if "text" in cfg.finetune and "text" in cfg.modalities else 1
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size * pool, collate_fn=collate, local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed * 1000 + epoch if cfg.shuffle_buffer else None,
        )
        if pool > 1:
            batches = length_bucketed(batches, cfg.batch_size, gen)
        timing = {"data": 0.0, "forward": 0.0, "backward": 0.0}  # seconds: waiting for Ray Data, model forward, backward + step
        tick = time.time()
        for batch in batches:
            batch["mask"] = modality_dropout(batch["mask"], cfg.modality_dropout, gen)
            batch = {k: v.to(device) for k, v in batch.items()}
            factor = lr_factor(state["step"], total_steps, cfg.warmup_frac)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            t_fwd = time.time()
            timing["data"] += t_fwd - tick
            out = forward(batch)
            loss = loss_of(out, batch, batch["mask"])
            t_bwd = time.time()
            timing["forward"] += t_bwd - t_fwd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tick = time.time()
            timing["backward"] += tick - t_bwd
            state["step"] += 1
            n = len(batch["emotion"])
            sums += torch.tensor([loss.item() * n, n], dtype=torch.float64)
            for h in HEADS:
                conf[h] += _confusions(out[h].detach().float().cpu(), batch[h].cpu(), len(HEADS[h]))
        if distributed:
            for t in [sums, *conf.values()]:
                dist.all_reduce(t)
            for b in model.buffers():  # BN running stats: rank 0's, so every rank evaluates the same model
                dist.broadcast(b.data, src=0)
        train_time = time.time() - t0

        # dev: every worker evaluates the whole (unsplit) dev set with the same weights
        model.eval()
        dsum = torch.zeros(2, dtype=torch.float64)
        dconf = {h: torch.zeros(len(HEADS[h]), len(HEADS[h]), dtype=torch.int64) for h in HEADS}
        if dev_batches is None:
            dev_batches = list(dev_shard.iter_torch_batches(batch_size=max(64, cfg.batch_size) * pool, collate_fn=collate))
            if pool > 1:
                dev_batches = list(length_bucketed(dev_batches, max(64, cfg.batch_size)))
        with torch.no_grad():
            for batch in dev_batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    out = model(batch)
                loss = sum(ce[h](out[h].float(), batch[h]) for h in HEADS)
                n = len(batch["emotion"])
                dsum += torch.tensor([loss.item() * n, n], dtype=torch.float64)
                for h in HEADS:
                    dconf[h] += _confusions(out[h].float().cpu(), batch[h].cpu(), len(HEADS[h]))

        metrics = {"epoch": epoch + 1, "train_loss": float(sums[0] / max(1, sums[1])), "dev_loss": float(dsum[0] / max(1, dsum[1])),
                   "lr": optimizer.param_groups[-1]["lr"], "train_time_s": train_time, "epoch_time_s": time.time() - t0,
                   "train_rows": int(sums[1]), "dev_rows": int(dsum[1]),
                   **{f"{k}_s": v for k, v in timing.items()}, "dev_time_s": time.time() - t0 - train_time}
        for split, cm in (("train", conf), ("dev", dconf)):
            for h in HEADS:
                m = metrics_from_confusion(cm[h].numpy())
                metrics[f"{split}_{h}_accuracy"] = m["accuracy"]
                metrics[f"{split}_{h}_weighted_f1"] = m["weighted_f1"]
                if split == "dev":
                    metrics[f"dev_{h}_macro_f1"] = m["macro_f1"]
        score = metrics[SCORE] = selection_score(metrics, cfg.select_on)
        if distributed:  # one decision for all ranks (rank 0's)
            t = torch.tensor([score], dtype=torch.float64)
            dist.broadcast(t, src=0)
            score = metrics[SCORE] = float(t[0])
        if score > state["best"] + 1e-9:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"].append({k: v for k, v in metrics.items()})
        stop = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience
        metrics.update(best_dev_score=state["best"], best_epoch=state["best_epoch"], early_stop=stop)

        if rank == 0:
            # one short line per epoch (the rest is in TensorBoard and the checkpoint's metrics)
            left = (cfg.epochs - epoch - 1) * (time.time() - t_loop) / (epoch + 1 - first_epoch)
            print(f"[train] epoch {epoch + 1}/{cfg.epochs} loss {metrics['train_loss']:.3f} (dev {metrics['dev_loss']:.3f}) | dev wF1 "
                  + " ".join(f"{h} {metrics[f'dev_{h}_weighted_f1']:.3f}" for h in HEADS)
                  + f" | {metrics['epoch_time_s']:.1f} s (data {timing['data']:.0f}, forward {timing['forward']:.0f}, "
                    f"backward {timing['backward']:.0f}, dev {metrics['dev_time_s']:.0f})"
                  + (f", ETA {left:.0f} s" if epoch + 1 < cfg.epochs else ""), flush=True)
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(k, v, epoch + 1)
            writer.flush()
            with tempfile.TemporaryDirectory(prefix="mmsa_ckpt_") as d:
                model_cpu_save(model, Path(d) / "model")
                _save_state(Path(d), optimizer, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=f"epoch_{epoch + 1:03d}")
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"epoch_{epoch + 1:03d}")
        if stop:
            if rank == 0:
                print(f"[train] early stop: no dev improvement for {cfg.patience} epochs (best epoch {state['best_epoch']})", flush=True)
            break
    if writer is not None:
        writer.close()


def _history(checkpoint) -> list | None:
    """Per-epoch metrics kept in a checkpoint's train_state.json."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return json.loads((Path(d) / "train_state.json").read_text()).get("history")


def model_cpu_save(model, path: Path) -> None:
    """model.save, from CPU copies of the weights when the model is on a GPU."""
    import torch

    if next(model.parameters()).device.type == "cpu":
        model.save(str(path))
        return
    import copy

    cpu = copy.deepcopy(model).to(torch.device("cpu"))
    cpu.save(str(path))


# ----------------------------------------------------------------------------- the driver


def reset_trainable(model, seed: int) -> None:
    """Re-initialise the trainable parts (projections, audio encoder, fusion, heads) from `seed`,
    leaving the frozen (or to-be-finetuned) backbones as built."""
    import torch

    torch.manual_seed(seed)
    for m in (model.video_proj, model.text_proj, model.audio_encoder, model.fusion, model.emotion_head,
              model.sentiment_head, model.modality_heads):
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


def run(job: JobConfig, cfg: TrainConfig, model_config) -> dict:
    """Featurize (cached mode), train with TorchTrainer, copy the best model to job.output,
    evaluate it on dev and write the report. Returns {"result", "best_metrics", "report", ...}."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mmsa_ray import console, evaluate, featurize

    if cfg.select_on not in SELECT_ON:  # here, not at the end of the first epoch
        raise ValueError(f"select_on must be one of {list(SELECT_ON)}, got {cfg.select_on!r}")
    t_start = time.time()
    ray.data.DataContext.get_current().enable_progress_bars = False
    storage = os.path.abspath(os.path.expanduser(job.storage_path or "~/ray_results"))
    name = job.name or f"mmsa_train_{time.strftime('%Y%m%d_%H%M%S')}"
    run_dir = os.path.join(storage, name)
    os.makedirs(run_dir, exist_ok=True)
    cache_dir = job.cache_dir or featurize.default_cache_dir(storage)
    cfg.modalities = parse_modalities(cfg.modalities)
    cfg.end_to_end = cfg.end_to_end or bool(cfg.finetune)

    model = featurize.build_model(model_config, init_seed=0)  # frozen trunks: seed 0, whatever --seed
    reset_trainable(model, cfg.seed)
    init_model = os.path.join(run_dir, "init_model")
    model.save(init_model)

    train_recs = featurize.meld_records(job.meld_dir, "train", job.limit)
    dev_recs = featurize.meld_records(job.meld_dir, "dev", job.limit)
    mel_shape = model_config.features.mel_shape
    info: dict = {"run_dir": run_dir, "mode": "end-to-end" if cfg.end_to_end else "cached"}
    if not cfg.end_to_end:
        feats = {}
        for split, recs in (("train", train_recs), ("dev", dev_recs)):
            feats[split] = featurize.featurize_records(
                recs, model, split, modalities=cfg.modalities, cache_dir=cache_dir, actors=job.actors,
                gpus_per_actor=job.gpus_per_actor, batch_size=job.featurize_batch_size)
            print("[featurize] " + feats[split].summary(), flush=True)
        bad = {s: {e["id"] for e in f.errors} for s, f in feats.items()}
        datasets = {s: ray.data.read_parquet(f.path).map_batches(drop_error_rows, batch_format="numpy", batch_size=256)
                    for s, f in feats.items()}
        info["featurize_s"] = {s: f.seconds for s, f in feats.items()}
        info["failed_clips"] = {s: len(f.errors) for s, f in feats.items()}
    else:
        bad = {"train": set(), "dev": set()}
        datasets = {}
        for split, recs in (("train", train_recs), ("dev", dev_recs)):
            staging = os.path.join(run_dir, "_staging", f"{split}.parquet")
            datasets[split] = featurize.raw_dataset(recs, init_model, cfg.modalities, staging).map_batches(
                drop_error_rows, batch_format="numpy", batch_size=64)
    train_labels = {"emotion": np.array([r.emotion_index for r in train_recs if r.id not in bad["train"]]),
                    "sentiment": np.array([r.sentiment_index for r in train_recs if r.id not in bad["train"]])}
    n_train = len(train_labels["emotion"])
    workers = job.num_workers
    loop_config = {
        **asdict(cfg), "init_model": init_model, "run_dir": run_dir, "mel_shape": list(mel_shape),
        "class_weights": {h: class_weights(train_labels[h], len(HEADS[h]), cfg.class_weighting).tolist() for h in HEADS},
        "steps_per_epoch": max(1, math.ceil(n_train / workers / cfg.batch_size)),
    }
    cpus = job.cpus_per_worker if job.cpus_per_worker is not None else (1.0 if job.use_gpu else 0.5)
    resources = {"CPU": cpus} | ({"GPU": 1} if job.use_gpu else {})
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = cfg.deterministic
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=job.max_failures),
            logging_config=console.train_logging_config(),
            checkpoint_config=CheckpointConfig(num_to_keep=job.num_to_keep, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=ingest),
    )
    t_fit = time.time()
    info["before_fit_s"] = t_fit - t_start
    result = trainer.fit()
    info["fit_s"] = time.time() - t_fit
    history = _history(result.checkpoint) or []
    # the checkpoint and its metrics from one pair (matching them by path could fall back to the
    # last epoch's metrics and name the wrong best epoch)
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if SCORE in m]
    best, best_metrics = max(kept, key=lambda cm: cm[1][SCORE]) if kept else (result.checkpoint, result.metrics)
    if best is None:
        raise RuntimeError(f"training produced no checkpoint (run dir {run_dir})")
    from mmsa_ray.checkpoint import install_checkpoint, refuse_non_checkpoint

    out = Path(job.output).absolute()
    refuse_non_checkpoint(out)  # before the copy: never replace a directory that is not a checkpoint
    with best.as_directory() as d:
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(d) / "model", tmp)
        install_checkpoint(tmp, out)
    if job.compact:  # the report below then scores the compact weights themselves (fp16 layers)
        from mmsa_ray.model import MultimodalSentimentModel

        MultimodalSentimentModel.load(out).save(out, compact=True)
    (out.parent / f"{out.name}.train.json").write_text(json.dumps(
        {"best_checkpoint": best.path, "best_metrics": best_metrics, "train_config": asdict(cfg), "job": asdict(job),
         "info": info, "history": history}, indent=1, default=str))

    # the report: the best model on dev, through the cached featurization of its own encoders
    from mmsa_ray.model import MultimodalSentimentModel

    best_model = MultimodalSentimentModel.load(out)
    dev_feat = featurize.featurize_records(dev_recs, best_model, "dev", modalities=cfg.modalities, cache_dir=cache_dir,
                                           actors=job.actors, gpus_per_actor=job.gpus_per_actor, batch_size=job.featurize_batch_size)
    data, errors = evaluate.load_features(dev_feat.path, cfg.modalities, mel_shape)
    report = evaluate.evaluate(best_model, data)
    report.update(checkpoint=str(out), data=f"{job.meld_dir} dev", modalities=",".join(cfg.modalities), errors=errors,
                  best_epoch=best_metrics.get("epoch"), train_run=run_dir)
    report_dir = Path(job.report_dir or out.parent / f"{out.name}_report")
    evaluate.write_report(report, report_dir, f"dev report of {out.name}")
    info["total_s"] = time.time() - t_start
    info["report_s"] = info["total_s"] - info["fit_s"] - info["before_fit_s"]
    return {"result": result, "history": history, "best_metrics": best_metrics, "report": report, "report_dir": str(report_dir), "output": str(out), "info": info}


def time_summary(info: dict, history: list[dict]) -> str:
    """Where a run's wall time went: set-up, each epoch's parts (rank 0), Ray Train's own share, the report."""
    keys = {"data": "data_s", "forward": "forward_s", "backward": "backward_s", "dev": "dev_time_s"}
    parts = {k: sum(h.get(key, 0.0) for h in history) for k, key in keys.items()}
    epochs = sum(h.get("epoch_time_s", 0.0) for h in history)
    return (f"time {info['total_s']:.0f} s: set-up {info['before_fit_s']:.0f} s (Ray start, featurize) | "
            f"training {info['fit_s']:.0f} s = {len(history)} epochs {epochs:.0f} s (waiting for data {parts['data']:.0f} s: "
            f"Ray Data read + tokenize; forward {parts['forward']:.0f} s; backward + step {parts['backward']:.0f} s; "
            f"dev {parts['dev']:.0f} s) + Ray Train start-up, checkpoints and reports {info['fit_s'] - epochs:.0f} s | "
            f"best model + dev report {info['report_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    from mmsa_ray import featurize
    from mmsa_ray.meld import check_meld_root, default_meld_dir

    d = TrainConfig()  # flag defaults are the config's
    p = argparse.ArgumentParser(prog="mmsa-ray train", description="Train the model data-parallel on Ray Train (cached features by default).")
    p.add_argument("--meld-dir", default=None, help="MELD root with {train,dev}_sent_emo.csv and clip folders (default $MELD_DIR)")
    p.add_argument("--modalities", default="text,audio,video", help="modalities to train on, any subset of text,audio,video (others masked to 0)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records of train and of dev (quick runs)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (data-parallel DDP; default 2)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL, bf16 autocast)")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs reserved per worker (default 0.5 on CPU, 1 with GPUs)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size per worker (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate of fusion and heads (default {d.lr:g})")
    p.add_argument("--encoder-lr", type=float, default=d.encoder_lr, help=f"learning rate of the projections and the audio encoder (default {d.encoder_lr:g})")
    p.add_argument("--backbone-lr", type=float, default=d.backbone_lr, help=f"learning rate of encoders unfrozen by --finetune (default {d.backbone_lr:g})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay:g})")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help=f"cross-entropy label smoothing (default {d.label_smoothing:g})")
    p.add_argument("--class-weighting", default=d.class_weighting, choices=list(CLASS_WEIGHTINGS), help=f"loss weights per class: none (serves weighted F1), sqrt or inverse frequency (serve macro F1) (default {d.class_weighting})")
    p.add_argument("--modality-dropout", type=float, default=d.modality_dropout, help=f"probability of hiding a present modality per sample, so that clips missing one still predict well (never all; default {d.modality_dropout:g})")
    p.add_argument("--patience", type=int, default=d.patience, help=f"stop after this many epochs without a gain in the --select-on score (0 = never; default {d.patience})")
    p.add_argument("--select-on", default=d.select_on, choices=SELECT_ON, help=f"dev weighted F1 that picks the best epoch and early-stops: emotion, sentiment or the mean of both (default {d.select_on})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the trainable parts' init, shuffling and dropout (default {d.seed})")
    p.add_argument("--end-to-end", action="store_true", help="stream raw clips (decode + features each epoch) instead of cached features")
    p.add_argument("--finetune", default="", help="encoders to unfreeze, comma separated: text,video (implies --end-to-end)")
    featurize.add_model_args(p)
    p.add_argument("--output", default="checkpoint", help="directory for the best model (model.save format; default ./checkpoint)")
    p.add_argument("--report-dir", default=None, help="directory for the dev report (default <output>_report)")
    p.add_argument("--compact", action="store_true", help="store --output compactly: only the weights that differ from the pretrained encoders (fine-tuned layers in float16); how the shipped starter checkpoint is made")
    p.add_argument("--storage-path", default=None, help="Ray Train storage (checkpoints, TensorBoard; default ~/ray_results)")
    p.add_argument("--name", default=None, help="run name; rerunning with the same name resumes it (default: timestamped)")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures to recover from the last checkpoint (default 1)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default <storage>/features or $MMSA_CACHE_DIR)")
    p.add_argument("--actors", type=int, default=1, help="featurize: encoder actor pool size (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="featurize: GPUs per encoder actor (default 0)")
    p.add_argument("--featurize-batch-size", type=int, default=32, help="featurize: clips per encoder batch (default 32)")
    p.add_argument("--pid-dir", default=None, help=argparse.SUPPRESS)
    from mmsa_ray import console

    console.add_verbose_arg(p)
    args = p.parse_args(argv)
    console.setup(args.verbose)

    if args.num_workers < 1:
        p.error(f"--num-workers must be >= 1, got {args.num_workers}")
    from mmsa_ray.checkpoint import refuse_non_checkpoint

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
    finetune = tuple(m for m in ("text", "video") if m in {x.strip() for x in args.finetune.split(",") if x.strip()})
    unknown = {x.strip() for x in args.finetune.split(",") if x.strip()} - {"text", "video"}
    if unknown:
        p.error(f"--finetune takes text and/or video, got {sorted(unknown)}")
    model_config = featurize.model_config_from_args(args, freeze_text="text" not in finetune, freeze_video="video" not in finetune,
                                                    modalities=parse_modalities(args.modalities))
    cfg = TrainConfig(
        modalities=parse_modalities(args.modalities), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        encoder_lr=args.encoder_lr, backbone_lr=args.backbone_lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, class_weighting=args.class_weighting, modality_dropout=args.modality_dropout, patience=args.patience, select_on=args.select_on, seed=args.seed,
        end_to_end=args.end_to_end, finetune=finetune, pid_dir=args.pid_dir,
    )
    job = JobConfig(meld_dir=meld_dir, output=args.output, storage_path=args.storage_path, name=args.name,
                    num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                    max_failures=args.max_failures, limit=args.limit, cache_dir=args.cache_dir, actors=args.actors,
                    gpus_per_actor=args.gpus_per_actor, featurize_batch_size=args.featurize_batch_size, report_dir=args.report_dir,
                    compact=args.compact)
    import ray

    started = console.init_ray()
    try:
        res = run(job, cfg, model_config)
    finally:
        if started:
            ray.shutdown()
    from mmsa_ray.evaluate import summary_line

    r = res["report"]
    print(f"[train] best epoch {res['best_metrics'].get('epoch')}; model -> {res['output']}; report -> {res['report_dir']}/report.md")
    print(f"[train] dev: {summary_line(r)}")
    print(f"[train] {time_summary(res['info'], res['history'])}")
    print(f"dev weighted F1: emotion {r['heads']['emotion']['weighted_f1']:.4f}, sentiment {r['heads']['sentiment']['weighted_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
