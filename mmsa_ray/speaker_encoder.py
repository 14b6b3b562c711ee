"""A voice as 256 numbers: the GE2E speaker encoder of Resemblyzer, ported to plain PyTorch.

    audio float32 [N] 16 kHz mono ─► power mel spectrogram [frames, 40] (25 ms windows, 10 ms
    hop) ─► partials of 160 frames (1.6 s) ─► 3-layer LSTM (256) ─► Linear + ReLU ─► L2 norm
    ─► mean of the partials, L2 norm ─► [256] float32, every value >= 0

The weights are Resemblyzer 0.1.4's `pretrained.pt` (Apache-2.0, Resemble AI), converted to
safetensors by `tools/convert_speaker_encoder.py`, which also checks this module's embeddings
against the package's own and writes the result beside the weights
(`mmsa_ray/pretrained/speaker-encoder/`). Nothing is unpickled at run time and nothing is
downloaded.

Same voice: cosine similarity of two embeddings around 0.8-0.95; different voices lower
(Resemblyzer's embeddings are non-negative, so two unrelated voices still score ~0.5-0.7).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial
PARTIAL_STEP = 77  # frames between partials of a longer stretch (Resemblyzer's 1.3 per second)
EMBED_DIM = 256
WEIGHTS_DIR = Path(__file__).resolve().parent / "pretrained" / "speaker-encoder"


class SpeakerEncoder(nn.Module):
    """mels [B, frames, 40] float32 (power, not log) -> embeddings [B, 256], L2-normed, >= 0."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBED_DIM)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


@functools.cache
def load_encoder(weights_dir: Path = WEIGHTS_DIR) -> SpeakerEncoder:
    """The shipped encoder (once per process), eval mode, on CPU; FileNotFoundError naming a
    missing file."""
    from safetensors.torch import load_file

    path = Path(weights_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the speaker encoder's weights are missing: {path} (reinstall mmsa_ray, or run "
                                "tools/convert_speaker_encoder.py)")
    encoder = SpeakerEncoder()
    encoder.load_state_dict(load_file(str(path)))
    return encoder.eval()


@functools.cache
def _mel_basis() -> torch.Tensor:
    import torchaudio

    # librosa's default filterbank (Slaney scale and area norm), which the encoder was trained on
    return torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE,
                                                  norm="slaney", mel_scale="slaney")  # [201, 40]


def mel_frames(audio: np.ndarray) -> torch.Tensor:
    """audio float32 [N] 16 kHz -> power mel spectrogram [N // 160 + 1, 40] float32 (centered
    frames, zero padded: librosa.feature.melspectrogram's defaults)."""
    wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    spec = torch.stft(nn.functional.pad(wave, (N_FFT // 2, N_FFT // 2)), N_FFT, HOP,
                      window=torch.hann_window(N_FFT), center=False, return_complex=True)
    return (spec.abs() ** 2).T @ _mel_basis()


def partial_starts(n_samples: int) -> list[int]:
    """The first mel frame of each 160-frame partial of a stretch of n_samples samples, as
    Resemblyzer's embed_utterance cuts them (1.3 partials per second): every PARTIAL_STEP
    frames; the last one dropped when less than 3/4 of it holds audio, unless it is the only one."""
    n_frames = -(-(n_samples + 1) // HOP)
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + PARTIAL_STEP + 1), PARTIAL_STEP))
    if len(starts) > 1 and (n_samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP) < 0.75:
        starts.pop()
    return starts


def embed_stretches(audio: np.ndarray, spans: list[tuple[int, int]], encoder: SpeakerEncoder | None = None,
                    batch: int = 128, floor_quantile: float | None = None) -> np.ndarray:
    """One embedding per stretch of audio: spans are sample ranges [a, b) of audio (float32
    [N] 16 kHz). Each stretch, zero padded to whole partials, is cut into partials
    (partial_starts) that go through the encoder in batches; their mean, L2-normed, is its
    embedding -> [len(spans), 256] float32 (Resemblyzer's embed_utterance)."""
    if not spans:
        return np.zeros((0, EMBED_DIM), np.float32)
    encoder = encoder or load_encoder()
    mels, owner = [], []
    for k, (a, b) in enumerate(spans):
        starts = partial_starts(b - a)
        wave = np.zeros(max(b - a, (starts[-1] + PARTIAL_FRAMES) * HOP), np.float32)
        wave[:b - a] = audio[a:b]
        frames = mel_frames(wave)
        if floor_quantile is not None:
            frames = without_floor(frames, b - a, floor_quantile)
        mels += [frames[s:s + PARTIAL_FRAMES] for s in starts]
        owner += [k] * len(starts)
    with torch.inference_mode():
        partials = torch.cat([encoder(torch.stack(mels[i:i + batch])) for i in range(0, len(mels), batch)])
    sums = torch.zeros(len(spans), EMBED_DIM).index_add_(0, torch.tensor(owner), partials)
    return nn.functional.normalize(sums, dim=1).numpy()


def without_floor(frames: torch.Tensor, n_samples: int, quantile: float) -> torch.Tensor:
    """frames [n, 40] power mel of a stretch (n_samples long, zero padded after) -> the same
    less each band's `quantile` over the stretch's own frames (its steady background: a hum,
    a noise bed), floored at 0. Additive noise adds power, so this takes most of it back out;
    on clean speech the quantile is near zero and nothing changes."""
    inside = frames[: max(1, n_samples // HOP)]
    return (frames - torch.quantile(inside, quantile, dim=0)).clamp_min(0.0)
