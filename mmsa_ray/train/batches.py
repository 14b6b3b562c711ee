"""Training batches: what a Ray Train worker does to each batch before the model sees it.

Ray Data rows (cached feature rows, or raw clips decoded and tokenized for
--end-to-end/--finetune) -> tensors (`to_tensors`, `ToTensors` as iter_torch_batches'
collate_fn) -> token batches regrouped by length (`length_bucketed`) -> per step, at random:
modalities hidden (`modality_dropout`) and later dialogue turns dropped
(`future_truncation`). Used by mmsa_ray.train.loop.
"""

from __future__ import annotations

import numpy as np

from mmsa_ray.features import DEFAULT_MEL_SHAPE
from mmsa_ray.labels import MODALITIES


def to_tensors(batch: dict[str, np.ndarray], modalities=MODALITIES, mel_shape=DEFAULT_MEL_SHAPE) -> dict:
    """A numpy batch (cached feature rows or raw decode_and_featurize rows) -> dict of CPU tensors.

    Cached: video_emb [B,512], text_emb [B,H], audio [B,1,64,300] (empty list = zeros).
    Raw: video [B,3,T,H,W], input_ids/attention_mask [B,L], audio [B,1,64,300].
    Always: mask [B,3] (restricted to `modalities`), emotion/sentiment [B] int64.
    """
    import torch

    from mmsa_ray.train.featurize import stack_audio

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
            batch["input_ids"] = batch["input_ids"][:, :longest]
            batch["attention_mask"] = batch["attention_mask"][:, :longest]
            yield batch


def modality_dropout(mask, p: float, generator=None):
    """Zero each present modality of each row with probability p, never all of a row's."""
    import torch

    if p <= 0:
        return mask
    drop = (torch.rand(mask.shape, generator=generator) < p).to(mask.device) & (mask > 0)
    new = torch.where(drop, torch.zeros_like(mask), mask)
    empty = (new.sum(dim=1) == 0) & (mask.sum(dim=1) > 0)
    return torch.where(empty.unsqueeze(1), mask, new)


def future_truncation(input_ids, attention_mask, marker_id: int, sep_id: int, generator=None):
    """Keep a random number of each row's later turns, uniformly 0..all of them: [B, L] int64
    ids and mask -> the new mask. A row's later turns follow its marker token, each ending
    with [SEP] (features.tokenize); dropping them all leaves the row as it is encoded
    without any (up to the room they took from the earlier turns). Rows without a marker
    are kept whole."""
    import torch

    is_marker = input_ids == marker_id
    has = is_marker.any(dim=1, keepdim=True)
    start = torch.where(has, is_marker.long().argmax(dim=1, keepdim=True), torch.full_like(has, input_ids.shape[1],
                                                                                            dtype=torch.long))
    pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    ends = (input_ids == sep_id) & (pos > start) & (attention_mask > 0)
    seps_before = torch.cumsum(ends.long(), dim=1) - ends.long()  # later turns finished before each token
    turns = ends.sum(dim=1, keepdim=True)
    keep_turns = (torch.rand(turns.shape, generator=generator).to(turns.device) * (turns + 1)).floor().long()
    keep = (pos < start) | (seps_before < keep_turns)
    return attention_mask * keep.long()
