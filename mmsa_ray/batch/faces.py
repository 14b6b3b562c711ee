"""The face stage of `mmsa-ray label`: an actor pool between decode and the model that adds
each row's face columns (mmsa_ray.faces), scaling on its own (`--face-actors`,
`--face-gpus-per-actor`).

Each row's window (the whole file when the row has none) is decoded again at
FaceConfig.sample_fps frames per second, the source's aspect ratio kept with the longer side
at most `max_side` px, CHUNK_S seconds at a time. A row without video (an audio-only file, a
manifest row without media) or with an error gets null face columns; a video row without a
face gets `face_count` 0 and null `face_emotion`: no visual signal, never a guess. A face
decode that fails leaves the row's face columns null and names why in `face_error`; the row's
label is not touched.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mmsa_ray.faces import FaceConfig, no_faces, row_faces

FACE_TRACK_TYPE = pa.struct([
    ("track", pa.int32()),  # 0, 1, ... in order of first appearance within the row
    ("box", pa.list_(pa.float32())),  # its largest box: x1, y1, x2, y2 px of the frame as displayed, at max_side
    ("seconds", pa.float64()),  # on screen: frames seen / sample_fps
    ("start", pa.float64()),  # first and last sampled frame it was seen in, seconds in the file
    ("end", pa.float64()),
    ("score", pa.float32()),  # mean detection probability
    ("emotion", pa.string()),  # top expression (labels.EMOTIONS)
    ("emotion_probs", pa.list_(pa.float32())),  # mean over its frames, labels.EMOTIONS order
    ("thumbnail", pa.string()),  # the largest face, 40 x 40 px, as a JPEG data URI (about 1.5 KB)
])
FACE_FIELDS = [
    ("faces", pa.list_(FACE_TRACK_TYPE)),  # every face track of the row, main face first; null: no video
    ("face_count", pa.int32()),  # tracks in the row; null: no video or faces off
    ("face_emotion", pa.string()),  # the main face's expression (largest box area x time on screen); null: no face
    ("face_emotion_probs", pa.list_(pa.float32())),
    ("face_error", pa.string()),  # why a row with video has no face columns (its frames could not be read)
]  # in the order of mmsa_ray.faces.FACE_COLUMNS


@dataclass
class FaceStageConfig:
    """The face stage of a label run: on or off, its actor pool and the frames it reads."""

    enabled: bool = True  # --faces on|off
    actors: tuple[int, int] = (1, 1)  # face actor pool (min, max)
    cpus_per_actor: float = 1.0  # CPUs reserved per face actor (also its torch threads)
    gpus_per_actor: float = 0.0  # 0: CPU actors; the networks run on cuda otherwise
    face: FaceConfig = field(default_factory=FaceConfig)  # what each row's frames go through

    def __post_init__(self) -> None:
        lo, hi = self.actors
        if not (1 <= lo <= hi):
            raise ValueError(f"face actors must be MIN,MAX with 1 <= MIN <= MAX, got {self.actors}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("face cpus/gpus per actor must be >= 0")


class FaceStage:
    """Actor: decoded rows (pyarrow) -> the same rows + FACE_COLUMNS."""

    def __init__(self, stage: FaceStageConfig, timeout_s: float):
        import torch

        from mmsa_ray.face_models import load_face_nets
        from mmsa_ray.media import DecodeConfig

        device = "cuda" if stage.gpus_per_actor > 0 else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.nets = load_face_nets(device=device)
        self.config = stage.face
        self.decode = DecodeConfig(timeout_s=timeout_s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select([c for c in ("uri", "start", "end", "error") if c in batch.column_names]).to_pylist()
        found = [self.read(row) for row in rows]
        for name, kind in FACE_FIELDS:
            batch = batch.append_column(pa.field(name, kind), pa.array([f[name] for f in found], kind))
        return batch

    def read(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row's face columns (mmsa_ray.faces.row_faces); a face error names the file."""
        from mmsa_ray.sources import open_media

        if row.get("error") or not row.get("uri"):
            return no_faces()
        with open_media(row["uri"]) as source:
            columns = row_faces(source, row.get("start"), row.get("end"), self.nets, self.config, self.decode)
        if columns["face_error"]:
            columns["face_error"] = f"{row['uri']}: {columns['face_error']}"
        return columns


def face_stage(ds, stage: FaceStageConfig, timeout_s: float):
    """ds (decoded rows) -> the face actor pool -> rows with FACE_COLUMNS."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        FaceStage,
        fn_constructor_kwargs={"stage": stage, "timeout_s": timeout_s},
        compute=ActorPoolStrategy(min_size=stage.actors[0], max_size=stage.actors[1]),
        batch_size=1,  # a row may be a long window: one at a time keeps the pool busy evenly
        batch_format="pyarrow",
        num_cpus=stage.cpus_per_actor,
        num_gpus=stage.gpus_per_actor,
    )


def add_face_args(p, d: FaceStageConfig) -> None:
    """The face stage's flags (label), defaults from `d`."""
    from mmsa_ray import console

    g = p.add_argument_group("faces", "who is on screen and what their face shows (per row; MTCNN + FER-2013)")
    g.add_argument("--faces", choices=("on", "off"), default="on" if d.enabled else "off",
                   help="find, track and read the faces of each row's frames into faces, face_count, face_emotion "
                   "(default on; rows without video cost nothing)")
    g.add_argument("--face-actors", type=console.min_max, default=d.actors, metavar="MIN,MAX",
                   help=f"face actor pool size (default {d.actors[0]},{d.actors[1]})")
    g.add_argument("--face-cpus-per-actor", type=float, default=d.cpus_per_actor,
                   help=f"CPUs reserved per face actor (default {d.cpus_per_actor:g})")
    g.add_argument("--face-gpus-per-actor", type=float, default=d.gpus_per_actor,
                   help="GPUs per face actor: 0 runs the face networks on CPU (default)")
    g.add_argument("--face-fps", type=float, default=d.face.sample_fps,
                   help=f"frames looked at per second of a row (default {d.face.sample_fps:g})")
    g.add_argument("--face-detect-every", type=int, default=d.face.detect_every, metavar="N",
                   help="full face detection on every Nth frame looked at; the frames between follow the faces "
                   f"already found, a new face is found at the next full detection (default {d.face.detect_every}; "
                   "1: every frame, about twice the CPU)")
    g.add_argument("--min-face", type=int, default=d.face.min_face_px, metavar="PX",
                   help=f"smallest face searched for, px of the frames read (default {d.face.min_face_px})")
    g.add_argument("--fuse", default=None, metavar="text=1,face=W",
                   help="also write fused_emotion: the checkpoint's calibrated emotion and the main face's, "
                   "log-linear pooled with these weights (no weight is validated: check it on your data)")
    g.add_argument("--face-max-side", type=int, default=d.face.max_side, metavar="PX",
                   help=f"frames are read with their longer side at most PX, aspect kept (default {d.face.max_side})")


def face_stage_from_args(a) -> FaceStageConfig:
    """FaceStageConfig from add_face_args' flags (ValueError for a bad combination)."""
    face = dataclasses.replace(FaceConfig(), sample_fps=a.face_fps, min_face_px=a.min_face, max_side=a.face_max_side,
                               detect_every=a.face_detect_every)
    return FaceStageConfig(enabled=a.faces == "on", actors=a.face_actors, cpus_per_actor=a.face_cpus_per_actor,
                           gpus_per_actor=a.face_gpus_per_actor, face=face)


def fitted(stage: FaceStageConfig, cpus: float) -> FaceStageConfig:
    """The stage with each actor reserving at most `cpus` (a small cluster's remainder)."""
    return dataclasses.replace(stage, cpus_per_actor=max(0.0, min(stage.cpus_per_actor, cpus)))
