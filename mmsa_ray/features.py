"""Decoded media -> model inputs: frames -> video tensor, waveform -> log-mel, text -> token ids.

numpy in, numpy out, so the same functions run in Ray Data workers, Serve replicas and
the training loop. One clip's features are a ``dict[str, np.ndarray]`` (no batch axis):

    "video"          float32 [3, T, H, W]  Kinetics-400 mean/std normalized; zeros when absent
    "audio"          float32 [1, 64, 300]  normalized log-mel; zeros when absent
    "input_ids"      int64   [128]         pad ids when there is no transcript; with dialogue context:
                                           [CLS] transcript [SEP] newest earlier utterance [SEP] older ... [SEP]
                                           and with later utterances too (FeatureConfig.future_turns):
                                           ... older [SEP] [MASK] next utterance [SEP] the one after [SEP]
    "attention_mask" int64   [128]         all zero when there is no transcript
    "mask"           float32 [3]           presence, labels.MODALITIES order (text, audio, video)

``collate`` stacks such dicts along a new axis 0 (the batch).
"""

from __future__ import annotations

import functools
import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmsa_ray.labels import MODALITIES

if TYPE_CHECKING:
    from mmsa_ray.media.types import Clip, DecodeConfig

# torchvision's Kinetics-400 video weights were trained on these ([0, 1] RGB pixels).
KINETICS_MEAN = np.array([0.43216, 0.394666, 0.37645], dtype=np.float32)
KINETICS_STD = np.array([0.22803, 0.22145, 0.216989], dtype=np.float32)
LOG_EPS = 1e-6  # log(mel + LOG_EPS): silence maps to log(1e-6) instead of -inf
NORM_EPS = 1e-5  # (x - mean) / (std + NORM_EPS): a constant spectrogram normalizes to 0

FEATURE_KEYS = ("video", "audio", "input_ids", "attention_mask", "mask")


@dataclass
class FeatureConfig:
    """Audio and text preprocessing; travels with the model in its checkpoint."""

    n_fft: int = 1024  # STFT window, samples
    hop_length: int = 512  # STFT hop, samples (32 ms at 16 kHz)
    n_mels: int = 64  # mel bands
    mel_frames: int = 300  # STFT frames kept (300 * 512 / 16 kHz = 9.6 s); shorter clips are zero-padded
    sample_rate: int = 16000  # Hz; must equal the decoder's sample_rate
    max_text_length: int = 128  # tokens per transcript (truncated / padded), dialogue context included
    context_turns: int = 0  # earlier utterances of the dialogue encoded with each transcript (0 = none)
    # each context utterance starts with utterances.SAME_SPEAKER or OTHER_SPEAKER: who said it, relative to
    # the current speaker (MELD's speakers in training, diarized ones in label and serve)
    context_speakers: bool = False
    # later utterances encoded after the earlier ones (0 = none), behind FUTURE_MARKER; a batch job
    # knows them, Serve only when the client sends them, and training drops them at random so that
    # the checkpoint reads rows with fewer or none as well
    future_turns: int = 0

    @property
    def mel_shape(self) -> tuple[int, int, int]:
        """Shape of one clip's log-mel: (1, n_mels, mel_frames)."""
        return (1, self.n_mels, self.mel_frames)

    def __post_init__(self) -> None:
        counts = ("context_turns", "future_turns")  # may be 0
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if k != "context_speakers"
               and not (isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if k in counts else v > 0))]
        if not isinstance(self.context_speakers, bool):
            bad.append(f"context_speakers={self.context_speakers!r}")
        if bad:
            raise ValueError("invalid FeatureConfig (positive ints; context_turns, future_turns >= 0): "
                             + ", ".join(bad))
        if self.hop_length > self.n_fft:
            raise ValueError(f"invalid FeatureConfig: hop_length={self.hop_length} > n_fft={self.n_fft}")


# ----------------------------------------------------------------------------- video


DEFAULT_MEL_SHAPE = FeatureConfig().mel_shape  # (1, 64, 300)


def video_features(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames [B, T, 3, H, W] -> float32 [B, 3, T, H, W], Kinetics mean/std normalized.

    Pixels are scaled to [0, 1] first, then ``(x - mean) / std`` per channel; results lie
    roughly in [-1.9, 2.9].
    """
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"video_features expects uint8 frames [B, T, 3, H, W], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"video_features expects uint8 frames, got dtype {frames.dtype}")
    x = frames.transpose(0, 2, 1, 3, 4).astype(np.float32)  # (B, 3, T, H, W)
    scale = (1.0 / (255.0 * KINETICS_STD)).reshape(1, 3, 1, 1, 1)
    shift = (KINETICS_MEAN / KINETICS_STD).reshape(1, 3, 1, 1, 1)
    x *= scale
    x -= shift
    return x


# ----------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=8)
def mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
    """One torchaudio MelSpectrogram per setting, built once (it holds the filterbank)."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels
    )


def log_mel(audio: list[np.ndarray], config: FeatureConfig) -> np.ndarray:
    """B mono waveforms (1-D float, [-1, 1], at config.sample_rate) -> float32 [B, 1, n_mels, mel_frames].

    Per clip: power mel spectrogram (torchaudio, centered frames), ``log(mel + 1e-6)``,
    the first ``mel_frames`` frames, normalized to zero mean / unit std over its valid
    frames; frames past the end of a short clip stay 0. An empty waveform gives all zeros.
    """
    import torch

    transform = mel_transform(config.sample_rate, config.n_fft, config.hop_length, config.n_mels)
    out = np.zeros((len(audio), *config.mel_shape), dtype=np.float32)
    # Samples that frame mel_frames-1 (centered, reflect-padded) still reads: cutting the
    # waveform there gives exactly the frames of the whole waveform, for less work.
    keep = (config.mel_frames - 1) * config.hop_length + config.n_fft // 2
    for i, wave in enumerate(audio):
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"log_mel expects 1-D mono waveforms, item {i} has shape {wave.shape}")
        if wave.size == 0:
            continue
        wave = wave[:keep]
        if not np.isfinite(wave).all():
            raise ValueError(f"log_mel: waveform {i} contains NaN or inf samples")
        if wave.size <= config.n_fft // 2:  # reflect padding needs more samples than it pads
            wave = np.pad(wave, (0, config.n_fft // 2 + 1 - wave.size))
        with torch.no_grad():
            mel = transform(torch.from_numpy(wave)).numpy()  # (n_mels, frames)
        mel = np.log(mel[:, : config.mel_frames].astype(np.float64) + LOG_EPS)
        std = mel.std()
        # A (numerically) constant spectrogram, e.g. digital silence, normalizes to 0.
        mel = (mel - mel.mean()) / (std + NORM_EPS) if std > NORM_EPS else np.zeros_like(mel)
        out[i, 0, :, : mel.shape[1]] = mel
    return out


# ----------------------------------------------------------------------------- text

# Hugging Face fast tokenizers are not safe to call from several threads at once
# ("Already borrowed"): Serve preprocesses in a thread pool.
_TOKENIZER_LOCK = threading.Lock()


def text_context(config: FeatureConfig, rows: int, contexts: list | None, futures: list | None) -> tuple[list, list]:
    """Per row (of `rows`), the earlier utterances (the last `context_turns`) and the later
    ones (the first `future_turns`) this config encodes, for `tokenize`; None: not given."""
    past, after = config.context_turns, config.future_turns
    contexts = contexts if contexts is not None else [None] * rows
    futures = futures if futures is not None else [None] * rows
    return ([list(c)[-past:] if past and c is not None else None for c in contexts],
            [list(f)[:after] if after and f is not None else None for f in futures])


def future_marker_id(tokenizer: Any) -> int:
    """The token that opens the later utterances: the tokenizer's mask token, which a
    transcript never contains and which training (`train.batches.future_truncation`) finds."""
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no mask token to mark later utterances (future_turns > 0)")
    return int(tokenizer.mask_token_id)


def tokenize(texts: list[str | None], tokenizer: Any, max_length: int,
             contexts: list[list[str] | None] | None = None,
             futures: list[list[str] | None] | None = None) -> dict[str, np.ndarray]:
    """Transcripts -> {"input_ids", "attention_mask"}: int64 [B, max_length] each.

    None, "" or whitespace-only means no transcript: pad ids and an all-zero mask (the
    context alone never makes text present). Longer texts are truncated to max_length
    tokens (special tokens included).

    contexts[i] (optional): the earlier utterances before texts[i], oldest first. They are
    encoded as the second segment, newest first and separated by the tokenizer's [SEP]:
    `[CLS] text [SEP] newest [SEP] older ... [SEP]`, so truncation drops the oldest words
    first and never the transcript itself (unless it alone is longer than max_length).
    futures[i] (optional): the later utterances, in time order. A row that has some is
    `[CLS] text [SEP] newest [SEP] ... [SEP] [MASK] next [SEP] after [SEP]` (see
    `future_marker_id`); earlier and later turns take the room left in turn, nearest first.
    """
    n = len(texts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((n, max_length), pad_id, dtype=np.int64)
    mask = np.zeros((n, max_length), dtype=np.int64)
    present = [i for i, t in enumerate(texts) if t is not None and str(t).strip()]
    if not present:
        return {"input_ids": ids, "attention_mask": mask}
    first = {i: str(texts[i]).strip() for i in present}
    earlier = {i: _turns(contexts, i) for i in present}
    later = {i: _turns(futures, i) for i in present}
    both = [i for i in present if later[i]]
    if both:
        for i, row in zip(both, _with_future([first[i] for i in both], [earlier[i] for i in both],
                                             [later[i] for i in both], tokenizer, max_length), strict=True):
            if row is not None:
                ids[i, :len(row)], mask[i, :len(row)] = row, 1
                present.remove(i)
    sep = f" {tokenizer.sep_token or tokenizer.eos_token or '|'} "
    second = {i: sep.join(reversed(earlier[i])) for i in present if earlier[i]}
    if second:  # a transcript that leaves no room for context is encoded alone
        with _TOKENIZER_LOCK:
            lengths = tokenizer([first[i] for i in second], add_special_tokens=False)["input_ids"]
        for i, toks in zip(list(second), lengths, strict=True):
            if len(toks) > max_length - 4:
                del second[i]
    kw = dict(padding="max_length", max_length=max_length, return_tensors="np")
    for rows, paired in (([i for i in present if i not in second], False), (list(second), True)):
        if not rows:
            continue
        with _TOKENIZER_LOCK:
            if paired:  # [CLS] text [SEP] context [SEP]: only the context is cut
                enc = tokenizer([first[i] for i in rows], [second[i] for i in rows], truncation="only_second", **kw)
            else:
                enc = tokenizer([first[i] for i in rows], truncation=True, **kw)
        ids[rows] = enc["input_ids"].astype(np.int64)
        mask[rows] = enc["attention_mask"].astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def _turns(lists: list[list[str] | None] | None, i: int) -> list[str]:
    """Row i's non-blank context utterances, stripped."""
    if lists is None:
        return []
    return [str(c).strip() for c in (lists[i] or []) if c is not None and str(c).strip()]


def _with_future(texts: list[str], earlier: list[list[str]], later: list[list[str]], tokenizer: Any,
                 max_length: int) -> list[list[int] | None]:
    """Token ids (unpadded) of rows with later utterances, laid out as `tokenize` says; None
    for a transcript too long to leave room for any (it is encoded alone, as without)."""
    marker = future_marker_id(tokenizer)
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    flat = [t for row in zip(texts, earlier, later, strict=True) for t in (row[0], *row[1], *row[2])]
    with _TOKENIZER_LOCK:
        pieces = iter(tokenizer(flat, add_special_tokens=False)["input_ids"])
    out: list[list[int] | None] = []
    for past_turns, future_turns in zip(earlier, later, strict=True):
        own = next(pieces)
        past = [next(pieces) for _ in past_turns][::-1]  # newest first
        future = [next(pieces) for _ in future_turns]
        room = max_length - len(own) - 2  # [CLS] own [SEP]
        if room < 2:
            out.append(None)
            continue
        kept: dict[str, list[list[int]]] = {"past": [], "future": []}
        order = [(side, t) for pair in itertools.zip_longest(past, future)
                 for side, t in zip(("past", "future"), pair, strict=True) if t is not None]
        for side, toks in order:
            cost = len(toks) + 1 + (side == "future" and not kept["future"])  # its [SEP] (+ the marker)
            if cost > room:
                fits = room - (cost - len(toks))
                if fits > 0:
                    kept[side].append(toks[:fits])
                break
            kept[side].append(toks)
            room -= cost
        row = [cls_id, *own, sep_id]
        for toks in kept["past"]:
            row += [*toks, sep_id]
        for j, toks in enumerate(kept["future"]):
            row += [*([marker] if j == 0 else []), *toks, sep_id]
        out.append(row)
    return out


# ----------------------------------------------------------------------------- one clip


def clip_features(
    clip: Clip | None,
    transcript: str | None,
    tokenizer: Any,
    config: FeatureConfig,
    decode: DecodeConfig | None = None,
    context: list[str] | None = None,
    future: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """A decoded clip (+ its transcript) -> its feature dict (see the module docstring).

    ``decode`` gives the [T, H, W] of the zero video of a clip without a video stream
    (DecodeConfig() defaults when not given); pass the config the clip was decoded with.
    A modality is absent when its stream is missing (audio: or decoded to zero samples),
    or, for text, when the transcript is None/blank. Silent audio is present.
    ``clip`` None: nothing was decoded (a checkpoint that uses neither audio nor video):
    both absent, and the video placeholder is a [3, 1, 1, 1] zero that no trunk reads.
    ``context``: the earlier utterances (oldest first); the last ``config.context_turns``
    of them are encoded with the transcript (see `tokenize`); ``future``: the later ones (in
    time order), of which the first ``config.future_turns`` are.
    """
    if decode is None:
        from mmsa_ray.media.types import DecodeConfig

        decode = DecodeConfig()
    if clip is None:
        video, has_video = np.zeros((3, 1, 1, 1), dtype=np.float32), False
    elif clip.frames is not None:
        frames = np.asarray(clip.frames)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"{clip.source}: frames must be uint8 [T, 3, H, W], got shape {frames.shape}")
        video = video_features(frames[None])[0]
        has_video = True
    else:
        video = np.zeros((3, decode.num_frames, decode.height, decode.width), dtype=np.float32)
        has_video = False

    has_audio = clip is not None and clip.audio is not None and np.asarray(clip.audio).size > 0
    if has_audio:
        if clip.sample_rate != config.sample_rate:
            raise ValueError(
                f"{clip.source}: audio decoded at {clip.sample_rate} Hz but features expect {config.sample_rate} Hz"
            )
        audio = log_mel([clip.audio], config)[0]
    else:
        audio = np.zeros(config.mel_shape, dtype=np.float32)

    tokens = tokenize([transcript], tokenizer, config.max_text_length, *text_context(config, 1, [context], [future]))
    has_text = bool(tokens["attention_mask"][0].any())
    present = {"text": has_text, "audio": has_audio, "video": has_video}
    return {
        "video": video,
        "audio": audio,
        "input_ids": tokens["input_ids"][0],
        "attention_mask": tokens["attention_mask"][0],
        "mask": np.array([present[m] for m in MODALITIES], dtype=np.float32),
    }


def collate(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feature dicts of single clips -> one batch: each key stacked along a new axis 0.

    All items must have the same keys and, per key, the same shape and dtype.
    """
    if not items:
        raise ValueError("collate: no items")
    keys = list(items[0])
    out: dict[str, np.ndarray] = {}
    for i, item in enumerate(items):
        if set(item) != set(keys):
            raise ValueError(f"collate: item {i} has keys {sorted(item)}, item 0 has {sorted(keys)}")
    for k in keys:
        arrays = [np.asarray(item[k]) for item in items]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"collate: {k!r} has different shapes across items: {sorted(shapes)} (decoded with different configs?)"
            )
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise ValueError(f"collate: {k!r} has different dtypes across items: {sorted(map(str, dtypes))}")
        out[k] = np.stack(arrays)
    return out
