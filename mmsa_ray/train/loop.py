"""The Ray Train worker loop (`train_loop`, run by every TorchTrainer worker) and its
config, `WorkerConfig` (a `TrainConfig` plus the run's values); mmsa_ray.train.driver
is the driver that starts it.

Each worker iterates its shard of the train set (`get_dataset_shard("train")`; cached
feature rows, or raw clips decoded and tokenized by Ray Data for --end-to-end/--finetune),
turns batches into tensors (mmsa_ray.train.batches: token batches regrouped by length,
modality dropout, later turns dropped at random), and trains the trainable parts with DDP: cross-entropy with label
smoothing on both heads (plus each modality's own heads, on the clips that have that
modality), modality dropout, AdamW (heads at lr, projections/audio encoder at encoder_lr,
unfrozen backbones at backbone_lr), warm-up + cosine schedule per step, bf16 autocast on GPU
only. Every epoch it scores the whole dev set (`selection_score`), early-stops on it, and
rank 0 reports the metrics with a checkpoint: ``model/`` plus ``train_state.json`` and
``optimizer.safetensors`` (`_save_state`; no pickle), from which a restarted worker group
resumes. The loop's steps: `_set_up` (model, optimizer, resume), `_train_epoch`,
`_evaluate_dev`, `_epoch_metrics` + `_select` (early stopping), `_report` (rank 0's
checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mmsa_ray import checkpoint
from mmsa_ray.labels import EMOTIONS, MODALITIES, SENTIMENTS
from mmsa_ray.train.batches import ToTensors, future_truncation, length_bucketed, modality_dropout

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
    # "none" serves weighted F1 (MELD's metric); "inverse" / "sqrt" frequency weights trade it for macro F1
    class_weighting: str = "none"
    aux_weight: float = 0.5  # weight of the per-modality heads' loss
    # per sample, per present modality; never drops all (so a clip missing a modality still predicts well)
    modality_dropout: float = 0.2
    # with FeatureConfig.future_turns: each step keeps a random number of each row's later turns (down to
    # none), so one checkpoint reads a batch job's rows (later turns known) and Serve's (often none)
    truncate_future: bool = True
    # with FeatureConfig.context_speakers: share of training rows read without [same]/[other] markers,
    # so rows whose speakers are unknown (speakers off) are read as well as marked ones
    speaker_dropout: float = 0.3
    patience: int = 3  # epochs without dev improvement before stopping (0 = never)
    # dev weighted F1 that picks the best epoch: "emotion", "sentiment" or "mean" of the two heads
    select_on: str = "mean"
    seed: int = 0  # shuffling and dropout; also the trainable parts' init unless init_seed says otherwise
    # the trainable parts' init alone: runs that share it and differ in `seed` start from one point,
    # so their weights can be averaged (a soup); None = seed
    init_seed: int | None = None
    end_to_end: bool = False  # stream raw clips (decode+features) instead of cached features
    finetune: tuple[str, ...] = ()  # encoders to unfreeze ("text", "video"); implies end_to_end
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer (0 = record order)
    length_pool: int = 8  # fine-tuned text: batches read at once and regrouped by token count (less padding; 1 = off)
    deterministic: bool = False  # Ray Data preserves row order (reproducible runs; slower streaming)
    pid_dir: str | None = None  # where each worker writes rank<r>.pid (tests kill one)


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


def _save_state(d: Path, optimizer, state: dict) -> None:
    """optimizer moments -> optimizer.safetensors, everything else -> train_state.json."""
    import torch
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous() if hasattr(v, "detach") else torch.tensor(v)
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


@dataclass
class WorkerConfig:
    """What every Ray Train worker runs with: the TrainConfig plus the values the driver sets for this run."""

    train: TrainConfig
    init_model: str  # the starting model (checkpoint.save format); a resumed worker loads its checkpoint's instead
    run_dir: str  # <storage>/<name>: rank 0 writes TensorBoard to its tensorboard/
    mel_shape: tuple[int, ...]  # the audio features' log-mel shape
    class_weights: dict[str, list[float]]  # head -> loss weight per class (see driver.class_weights)
    steps_per_epoch: int  # per worker: the length of the lr schedule is steps_per_epoch * epochs

    def loop_config(self) -> dict:
        """TorchTrainer's train_loop_config: a dict that carries this dataclass (pickled) to `train_loop`."""
        return {"worker": self}


def train_loop(config: dict) -> None:
    """Ray Train per-worker function: `train_worker` on the WorkerConfig in `WorkerConfig.loop_config()`."""
    train_worker(config["worker"])


@dataclass
class _Tally:
    """Loss and confusion counts over a pass of one split: sums = [loss * rows, rows], conf: head -> [K, K]."""

    sums: object
    conf: dict

    @classmethod
    def zeros(cls) -> _Tally:
        import torch

        return cls(torch.zeros(2, dtype=torch.float64),
                   {h: torch.zeros(len(HEADS[h]), len(HEADS[h]), dtype=torch.int64) for h in HEADS})

    def add(self, loss, out: dict, batch: dict) -> None:
        import torch

        n = len(batch["emotion"])
        self.sums += torch.tensor([loss.item() * n, n], dtype=torch.float64)
        for h in HEADS:
            self.conf[h] += _confusions(out[h].detach().float().cpu(), batch[h].cpu(), len(HEADS[h]))


@dataclass
class _Worker:
    """One worker's training objects (`_set_up`); `state` is what a checkpoint keeps besides the model."""

    cfg: TrainConfig
    rank: int
    distributed: bool  # more than one worker, with torch.distributed up
    device: object
    model: object
    ddp: object  # the model wrapped by DDP (the model itself on one worker)
    optimizer: object
    state: dict  # epoch, step, best, best_epoch, bad_epochs, history
    ce: dict  # head -> CrossEntropyLoss (mean)
    ce_none: dict  # head -> CrossEntropyLoss per row (the per-modality heads)
    total_steps: int
    use_bf16: bool
    gen: object  # torch.Generator: modality dropout and length buckets
    collate: ToTensors
    pool: int  # training batches read at once for `length_bucketed` (1 = off)
    future_ids: tuple[int, int] | None = None  # (marker, [SEP]) token ids when later turns are truncated
    writer: object = None  # TensorBoard (rank 0)
    dev_batches: list | None = None  # the dev set is small and fixed: read once, evaluated every epoch


def train_worker(wc: WorkerConfig) -> None:
    """Train, evaluate on dev and report (with a checkpoint on rank 0) once per epoch, from the checkpoint
    Ray Train hands back after a failure if there is one; stop early after `patience` epochs without gain."""
    import ray.train

    w = _set_up(wc)
    cfg = w.cfg
    train_shard = ray.train.get_dataset_shard("train")
    dev_shard = ray.train.get_dataset_shard("dev")
    t_loop, first_epoch = time.time(), w.state["epoch"]
    for epoch in range(w.state["epoch"], cfg.epochs):
        t0 = time.time()
        train, timing = _train_epoch(w, train_shard, epoch)
        train_time = time.time() - t0
        dev = _evaluate_dev(w, dev_shard)
        metrics = _epoch_metrics(w, epoch, train, dev, timing, t0, train_time)
        stop = _select(w, metrics, epoch)
        eta_s = (cfg.epochs - epoch - 1) * (time.time() - t_loop) / (epoch + 1 - first_epoch)
        _report(w, metrics, epoch, timing, eta_s)
        if stop:
            if w.rank == 0:
                print(f"[train] early stop: no dev improvement for {cfg.patience} epochs "
                      f"(best epoch {w.state['best_epoch']})", flush=True)
            break
    if w.writer is not None:
        w.writer.close()


# ----------------------------------------------------------------------------- set-up


def _set_up(wc: WorkerConfig) -> _Worker:
    """Rank and device, the model (initial or resumed) under DDP, AdamW, the training state, the losses."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    cfg = wc.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    if cfg.pid_dir:
        Path(cfg.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))

    device = ray.train.torch.get_device()
    model, resume_dir = _load_model(wc.init_model)
    torch.manual_seed(cfg.seed * 1000 + rank)
    model.train()
    model.to(device)
    ddp = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = _optimizer(model, cfg)
    state = _training_state(optimizer, resume_dir, cfg, rank)
    ce, ce_none = _losses(wc, device)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(wc.run_dir, "tensorboard"))
    # Only where the text encoder trains: frozen end-to-end runs must see the batches the
    # cached mode sees (they train the same model), and cached rows have no tokens.
    pool = max(1, cfg.length_pool) if "text" in cfg.finetune and "text" in cfg.modalities else 1
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * state["epoch"])
    future_ids = None
    if cfg.truncate_future and model.config.features.future_turns and "text" in cfg.modalities:
        from mmsa_ray.features import future_marker_id

        future_ids = (future_marker_id(model.tokenizer), int(model.sep_token_id))
    return _Worker(
        cfg=cfg, rank=rank, distributed=distributed, device=device, model=model, ddp=ddp, optimizer=optimizer,
        state=state, ce=ce, ce_none=ce_none, total_steps=max(1, wc.steps_per_epoch * cfg.epochs),
        use_bf16=device.type == "cuda", gen=gen, collate=ToTensors(cfg.modalities, tuple(wc.mel_shape)), pool=pool,
        future_ids=future_ids, writer=writer,
    )


def _load_model(init_model: str):
    """The model of the checkpoint Ray Train resumes from (and its local copy, for the training state), else
    the initial model (and None)."""
    import ray.train

    resume = ray.train.get_checkpoint()
    if resume is None:
        return checkpoint.load(init_model), None
    resume_dir = Path(tempfile.mkdtemp(prefix="mmsa_resume_"))
    resume.to_directory(str(resume_dir))
    return checkpoint.load(resume_dir / "model"), resume_dir


def _group_lrs(cfg: TrainConfig) -> dict[str, float]:
    return {"heads": cfg.lr, "encoders": cfg.encoder_lr, "backbones": cfg.backbone_lr}


def _optimizer(model, cfg: TrainConfig):
    """AdamW over the model's parameter groups, each at its own base learning rate."""
    import torch

    lrs = _group_lrs(cfg)
    groups = [{"params": g["params"], "lr": lrs[g["name"]], "name": g["name"], "base_lr": lrs[g["name"]]}
              for g in model.param_groups()]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def _training_state(optimizer, resume_dir: Path | None, cfg: TrainConfig, rank: int) -> dict:
    """A fresh training state, or the resumed checkpoint's (loading its optimizer moments into `optimizer`);
    the base learning rates are this run's either way."""
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume_dir is not None:
        state.update(_load_state(resume_dir, optimizer))
        shutil.rmtree(resume_dir, ignore_errors=True)
        if rank == 0:
            print(f"[train] resumed from the checkpoint of epoch {state['epoch']}", flush=True)
    lrs = _group_lrs(cfg)
    for g in optimizer.param_groups:
        g["base_lr"] = lrs[g["name"]]
    return state


def _losses(wc: WorkerConfig, device) -> tuple[dict, dict]:
    """Class-weighted, label-smoothed cross-entropy per head: mean-reduced, and per row."""
    import torch
    from torch import nn

    smoothing = wc.train.label_smoothing
    weights = {h: torch.tensor(wc.class_weights[h], dtype=torch.float32, device=device) for h in HEADS}
    ce = {h: nn.CrossEntropyLoss(weight=weights[h], label_smoothing=smoothing) for h in HEADS}
    ce_none = {h: nn.CrossEntropyLoss(weight=weights[h], label_smoothing=smoothing, reduction="none") for h in HEADS}
    return ce, ce_none


# ----------------------------------------------------------------------------- one epoch


def _autocast(w: _Worker):
    import torch

    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=w.use_bf16)


def _loss(w: _Worker, out: dict, batch: dict):
    """Both heads' loss, plus aux_weight times each modality's own heads' on the rows that have it."""
    cfg = w.cfg
    mask = batch["mask"]
    loss = sum(w.ce[h](out[h].float(), batch[h]) for h in HEADS)
    if cfg.aux_weight > 0:
        for i, m in enumerate(MODALITIES):
            present = mask[:, i]  # 0 for unused modalities: their heads stay in the graph (DDP) at no loss
            for h in HEADS:
                per = w.ce_none[h](out["per_modality"][m][h].float(), batch[h])
                loss = loss + cfg.aux_weight * (per * present).sum() / present.sum().clamp(min=1) / len(cfg.modalities)
    return loss


def _train_epoch(w: _Worker, shard, epoch: int) -> tuple[_Tally, dict[str, float]]:
    """One pass over this worker's shard. Returns the tally (summed over the workers) and the seconds spent
    waiting for Ray Data, in the forward pass, and in backward + step."""
    import torch.distributed as dist

    cfg = w.cfg
    w.model.train()
    tally = _Tally.zeros()
    batches = shard.iter_torch_batches(
        batch_size=cfg.batch_size * w.pool, collate_fn=w.collate, local_shuffle_buffer_size=cfg.shuffle_buffer or None,
        local_shuffle_seed=cfg.seed * 1000 + epoch if cfg.shuffle_buffer else None,
    )
    if w.pool > 1:
        batches = length_bucketed(batches, cfg.batch_size, w.gen)
    timing = {"data": 0.0, "forward": 0.0, "backward": 0.0}
    tick = time.time()
    for batch in batches:
        batch["mask"] = modality_dropout(batch["mask"], cfg.modality_dropout, w.gen)
        if w.future_ids is not None and "input_ids" in batch:
            batch["attention_mask"] = future_truncation(batch["input_ids"], batch["attention_mask"], *w.future_ids,
                                                        generator=w.gen)
        batch = {k: v.to(w.device) for k, v in batch.items()}
        factor = lr_factor(w.state["step"], w.total_steps, cfg.warmup_frac)
        for g in w.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        t_fwd = time.time()
        timing["data"] += t_fwd - tick
        with _autocast(w):
            out = w.ddp(batch)
        loss = _loss(w, out, batch)
        t_bwd = time.time()
        timing["forward"] += t_bwd - t_fwd
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        w.optimizer.step()
        tick = time.time()
        timing["backward"] += tick - t_bwd
        w.state["step"] += 1
        tally.add(loss, out, batch)
    if w.distributed:
        for t in [tally.sums, *tally.conf.values()]:
            dist.all_reduce(t)
        for b in w.model.buffers():  # BN running stats: rank 0's, so every rank evaluates the same model
            dist.broadcast(b.data, src=0)
    return tally, timing


def _evaluate_dev(w: _Worker, shard) -> _Tally:
    """Every worker evaluates the whole (unsplit) dev set with the same weights."""
    import torch

    w.model.eval()
    tally = _Tally.zeros()
    if w.dev_batches is None:
        size = max(64, w.cfg.batch_size)
        w.dev_batches = list(shard.iter_torch_batches(batch_size=size * w.pool, collate_fn=w.collate))
        if w.pool > 1:
            w.dev_batches = list(length_bucketed(w.dev_batches, size))
    with torch.no_grad():
        for batch in w.dev_batches:
            batch = {k: v.to(w.device) for k, v in batch.items()}
            with _autocast(w):
                out = w.model(batch)
            loss = sum(w.ce[h](out[h].float(), batch[h]) for h in HEADS)
            tally.add(loss, out, batch)
    return tally


# ----------------------------------------------------------------------------- metrics, report, checkpoint


def _epoch_metrics(w: _Worker, epoch: int, train: _Tally, dev: _Tally, timing: dict[str, float], t0: float,
                   train_time: float) -> dict:
    """The epoch's losses, accuracies and F1s, learning rate, row counts and timings (seconds)."""
    from mmsa_ray.train.evaluate import metrics_from_confusion

    metrics = {
        "epoch": epoch + 1, "train_loss": float(train.sums[0] / max(1, train.sums[1])),
        "dev_loss": float(dev.sums[0] / max(1, dev.sums[1])), "lr": w.optimizer.param_groups[-1]["lr"],
        "train_time_s": train_time, "epoch_time_s": time.time() - t0,
        "train_rows": int(train.sums[1]), "dev_rows": int(dev.sums[1]),
        **{f"{k}_s": v for k, v in timing.items()}, "dev_time_s": time.time() - t0 - train_time,
    }
    for split, tally in (("train", train), ("dev", dev)):
        for h in HEADS:
            m = metrics_from_confusion(tally.conf[h].numpy())
            metrics[f"{split}_{h}_accuracy"] = m["accuracy"]
            metrics[f"{split}_{h}_weighted_f1"] = m["weighted_f1"]
            if split == "dev":
                metrics[f"dev_{h}_macro_f1"] = m["macro_f1"]
    return metrics


def _select(w: _Worker, metrics: dict, epoch: int) -> bool:
    """Score the epoch (rank 0's score on every rank), keep the best and the history in the training state,
    and say whether to stop early."""
    import torch
    import torch.distributed as dist

    cfg, state = w.cfg, w.state
    score = metrics[SCORE] = selection_score(metrics, cfg.select_on)
    if w.distributed:  # one decision for all ranks (rank 0's)
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
    return stop


def _report(w: _Worker, metrics: dict, epoch: int, timing: dict[str, float], eta_s: float) -> None:
    """ray.train.report once per epoch on every worker; rank 0 logs the epoch and attaches the checkpoint."""
    import ray.train

    name = f"epoch_{epoch + 1:03d}"
    if w.rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    _log_epoch(w, metrics, epoch, timing, eta_s)
    with tempfile.TemporaryDirectory(prefix="mmsa_ckpt_") as d:
        model_cpu_save(w.model, Path(d) / "model")
        _save_state(Path(d), w.optimizer, w.state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)


def _log_epoch(w: _Worker, metrics: dict, epoch: int, timing: dict[str, float], eta_s: float) -> None:
    """One short line per epoch on stdout; every number to TensorBoard (and the checkpoint's metrics)."""
    epochs = w.cfg.epochs
    print(f"[train] epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.3f} (dev {metrics['dev_loss']:.3f})"
          " | dev wF1 "
          + " ".join(f"{h} {metrics[f'dev_{h}_weighted_f1']:.3f}" for h in HEADS)
          + f" | {metrics['epoch_time_s']:.1f} s (data {timing['data']:.0f}, forward {timing['forward']:.0f}, "
            f"backward {timing['backward']:.0f}, dev {metrics['dev_time_s']:.0f})"
          + (f", ETA {eta_s:.0f} s" if epoch + 1 < epochs else ""), flush=True)
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            w.writer.add_scalar(k, v, epoch + 1)
    w.writer.flush()


def model_cpu_save(model, path: Path) -> None:
    """model.save, from CPU copies of the weights when the model is on a GPU."""
    import torch

    if next(model.parameters()).device.type == "cpu":
        checkpoint.save(model, str(path))
        return
    import copy

    cpu = copy.deepcopy(model).to(torch.device("cpu"))
    checkpoint.save(cpu, str(path))
