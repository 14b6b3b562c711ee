"""Faces: frames -> faces -> tracks within a row's window -> expression per track.

    frames uint8 [F, 3, H, W] RGB at times [F] s
      ─► detect (MTCNN: an image pyramid through PNet, crops through RNet and ONet) on every
         detect_every-th frame; on the frames between, follow the faces found (ONet on their
         boxes, or MTCNN in a window around a face that moved further)
           per frame: boxes [N, 4] px (x1, y1, x2, y2), scores [N], landmarks [N, 5, 2] px
      ─► expressions (FER-2013 mini-Xception on a grey 64x64 square around each box; face_expressions)
           per face: probabilities [7] in MELD's emotion order
      ─► tracks (a face continues the track whose last box overlaps it most, IoU >= track_iou)
      ─► window summary: every track (largest box, seconds on screen, mean expression) and the
         main face, the track with the most box area summed over its frames: the face that is
         both largest and longest on screen.

A window without a face has no video signal: `face_count` 0 and `face_emotion` null, never a
guess. The networks are `face_models`; nothing here picks a device beyond the nets' own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mmsa_ray.face_expressions import expressions, face_squares, grey_inputs, jpeg_data_uri, thumbnails
from mmsa_ray.face_models import FaceNets
from mmsa_ray.labels import EMOTIONS
from mmsa_ray.media import DecodeConfig, decode_clip

CHUNK_S = 8.0  # a row's frames are decoded this many seconds at a time: a long row never holds them all
FACE_COLUMNS = ("faces", "face_count", "face_emotion", "face_emotion_probs", "face_error")  # what a row gets


@dataclass(frozen=True)
class FaceConfig:
    sample_fps: float = 2.0  # frames looked at per second of a row's window
    min_face_px: int = 40  # smallest face side searched for, px of the frames read
    max_side: int = 640  # frames are read with their longer side at most this, px (aspect ratio kept)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN's P-, R-, O-net face probability
    min_score: float = 0.9  # a detection below this final probability is dropped
    pyramid_factor: float = 0.709  # scale between pyramid levels (MTCNN's)
    margin: float = 0.1  # share of the face's side added around it before reading its expression
    track_iou: float = 0.3  # a face continues a track when its box overlaps the track's last box this much
    max_gap_frames: int = 1  # sampled frames a track may miss and still continue
    # Full detection on every Nth sampled frame (a batch's first included); the frames between
    # follow the faces of the frame before them (follow): a new face is found at the next full
    # detection (N / sample_fps s later at most), for about half the CPU at N = 2.
    detect_every: int = 2

    def __post_init__(self):
        if not (self.sample_fps > 0 and np.isfinite(self.sample_fps)):
            raise ValueError(f"sample_fps must be a positive number of frames per second, got {self.sample_fps}")
        if self.min_face_px < 12:
            raise ValueError(f"min_face_px must be at least 12 (MTCNN's smallest window), got {self.min_face_px}")
        if self.max_side < 2 * self.min_face_px:
            raise ValueError(f"max_side must be at least twice min_face_px ({2 * self.min_face_px}), "
                             f"got {self.max_side}")
        if not all(0 < t < 1 for t in (*self.thresholds, self.min_score, self.track_iou)):
            raise ValueError("thresholds, min_score and track_iou must be probabilities in (0, 1)")
        if not (isinstance(self.detect_every, int) and self.detect_every >= 1):
            raise ValueError(f"detect_every must be a whole number of frames >= 1, got {self.detect_every!r}")
        if not 0 < self.pyramid_factor < 1:
            raise ValueError(f"pyramid_factor must be in (0, 1), got {self.pyramid_factor}")


@dataclass
class Face:
    """One face in one frame."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 px
    score: float  # detector's face probability
    landmarks: list[tuple[float, float]]  # eyes, nose, mouth corners (x, y) px
    emotion_probs: list[float] = field(default_factory=list)  # [7] MELD order
    # uint8 [THUMBNAIL_PX, THUMBNAIL_PX, 3] RGB (face_expressions): the square the expression was read from
    thumbnail: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class FaceTrack:
    """One face followed across a window's sampled frames."""

    track: int  # 0, 1, ... in order of first appearance
    times: list[float] = field(default_factory=list)  # s, one per frame the face was seen in
    faces: list[Face] = field(default_factory=list)

    @property
    def area_time(self) -> float:
        """Box area summed over the frames it was seen in (px^2 x frames): the main-face rule."""
        return float(sum(_area(f.box) for f in self.faces))

    def summary(self, sample_fps: float) -> dict:
        """{track, box (the largest), seconds (frames seen / sample_fps), start, end, score,
        emotion, emotion_probs (mean over frames, MELD order), thumbnail (the largest face as a
        JPEG data URI, None without one)}."""
        probs = np.mean([f.emotion_probs for f in self.faces], axis=0)
        largest = max(self.faces, key=lambda f: _area(f.box))
        return {"track": self.track, "box": [round(v, 1) for v in largest.box],
                "seconds": round(len(self.faces) / sample_fps, 3), "start": round(self.times[0], 3),
                "end": round(self.times[-1], 3), "score": round(float(np.mean([f.score for f in self.faces])), 4),
                "emotion": EMOTIONS[int(probs.argmax())], "emotion_probs": [round(float(p), 6) for p in probs],
                "thumbnail": jpeg_data_uri(largest.thumbnail)}


# ---- detection (MTCNN) ----

def _pyramid(height: int, width: int, config: FaceConfig) -> list[float]:
    """Scales at which PNet's 12 px window sees faces from min_face_px up to the frame's side."""
    scale, side, scales = 12.0 / config.min_face_px, min(height, width) * 12.0 / config.min_face_px, []
    while side >= 12:
        scales.append(scale)
        scale, side = scale * config.pyramid_factor, side * config.pyramid_factor
    return scales


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _proposals(images: torch.Tensor, nets: FaceNets, config: FaceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """PNet over the pyramid: candidate boxes [M, 5] (x1, y1, x2, y2, score) already moved by
    their offsets and made square, and the frame index of each [M]."""
    from torchvision.ops import batched_nms

    height, width = images.shape[2:]
    boxes, owners = [], []
    for scale in _pyramid(height, width, config):
        level = F.interpolate(images, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
        offsets, probs = nets.pnet(_normalize(level).contiguous(memory_format=torch.channels_last))
        hit = probs[:, 1] >= config.thresholds[0]
        where = hit.nonzero()  # [M, 3]: frame, row, column
        cells = where[:, 1:].flip(1).to(images.dtype)  # (x, y) of each output cell
        found = torch.cat([((2 * cells + 1) / scale).floor(), ((2 * cells + 12) / scale).floor(),
                           probs[:, 1][hit].unsqueeze(1), offsets.permute(0, 2, 3, 1)[hit]], dim=1)
        keep = batched_nms(found[:, :4], found[:, 4], where[:, 0], 0.5)
        boxes.append(found[keep])
        owners.append(where[keep, 0])
    found, owner = torch.cat(boxes), torch.cat(owners)
    keep = batched_nms(found[:, :4], found[:, 4], owner, 0.7)
    found, owner = found[keep], owner[keep]
    size = (found[:, 2:4] - found[:, 0:2]).repeat(1, 2)
    moved = torch.cat([found[:, :4] + found[:, 5:9] * size, found[:, 4:5]], dim=1)
    return _square(moved), owner


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [M, >=4] grown about their centre to squares of their longer side (in place)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2:4] = boxes[:, 0:2] + side.unsqueeze(1)
    return boxes


def _crops(images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, size: int):
    """The in-frame part of each box resized to size x size ([M', 3, size, size], normalized)
    and which boxes had one (bool [M])."""
    height, width = images.shape[2:]
    x1y1x2y2 = boxes[:, :4].trunc().int().tolist()
    crops, ok = [], []
    for (x1, y1, x2, y2), frame in zip(x1y1x2y2, owner.tolist(), strict=True):
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, width), min(y2, height)
        ok.append(x2 > x1 - 1 and y2 > y1 - 1)
        if ok[-1]:
            patch = images[frame:frame + 1, :, y1 - 1:y2, x1 - 1:x2]
            crops.append(F.interpolate(patch, size=(size, size), mode="area"))
    mask = torch.tensor(ok, dtype=torch.bool)
    if not crops:
        return images.new_zeros((0, 3, size, size)), mask
    return _normalize(torch.cat(crops)), mask


def _apply_offsets(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes [M, 5] moved by RNet/ONet offsets [M, 4] (shares of the box's inclusive size)."""
    size = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    return torch.cat([boxes[:, :4] + offsets * size, boxes[:, 4:5]], dim=1)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, owner: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by per-frame NMS whose overlap is intersection over the smaller box (MTCNN's
    last step), best score first."""
    keep = []
    for frame in np.unique(owner):
        idx = np.flatnonzero(owner == frame)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        x1, y1, x2, y2 = boxes.T
        area = (x2 - x1 + 1) * (y2 - y1 + 1)
        while len(idx):
            best, rest = idx[0], idx[1:]
            keep.append(best)
            iw = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
            ih = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
            idx = rest[iw * ih / np.minimum(area[best], area[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _stage(images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, net, size: int, threshold: float):
    """Crops of the boxes through RNet or ONet -> (the boxes that pass [M', 5] with the net's
    score, their frames [M'], the net's other outputs for them)."""
    crops, ok = _crops(images, boxes, owner, size)
    # channels-last: CPU max-pooling of many small crops runs about twice as fast in it
    *outputs, probs = net(crops.contiguous(memory_format=torch.channels_last))
    passed = probs[:, 1] > threshold
    boxes = torch.cat([boxes[ok][passed, :4], probs[passed, 1:2]], dim=1)
    return boxes, owner[ok][passed], [o[passed] for o in outputs]


def _landmarks(boxes: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
    """ONet's landmarks [M, 10] (x shares, then y shares of the box) -> px [M, 5, 2]."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + 1
    return torch.stack([boxes[:, 0:1] + size[:, 0:1] * marks[:, :5] - 1,
                        boxes[:, 1:2] + size[:, 1:2] * marks[:, 5:] - 1], dim=2)


@torch.inference_mode()
def detect(frames: np.ndarray, nets: FaceNets, config: FaceConfig | None = None) -> list[list[Face]]:
    """frames uint8 [F, 3, H, W] RGB -> per frame, the faces found (no expressions yet), best first."""
    from torchvision.ops import batched_nms

    config = config or FaceConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, 3, H, W] RGB, got {frames.dtype} {list(frames.shape)}")
    result: list[list[Face]] = [[] for _ in range(len(frames))]
    if not len(frames) or min(frames.shape[2:]) < config.min_face_px:
        return result
    images = torch.from_numpy(np.ascontiguousarray(frames)).to(nets.device, torch.float32)
    boxes, owner = _proposals(images, nets, config)
    if len(boxes):
        boxes, owner, (offsets,) = _stage(images, boxes, owner, nets.rnet, 24, config.thresholds[1])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
        boxes, owner = _square(_apply_offsets(boxes[keep], offsets[keep])), owner[keep]
    if len(boxes):
        _last_stage(images, boxes, owner, nets, config, result)
    return result


def _last_stage(images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, nets: FaceNets, config: FaceConfig,
                result: list[list[Face]]) -> None:
    """ONet over square boxes [M, >=4] px of `images` (the frame of each: owner [M]): the faces it
    confirms, after MTCNN's last NMS and min_score, appended to result[frame], best first."""
    boxes, owner, (offsets, marks) = _stage(images, boxes, owner, nets.onet, 48, config.thresholds[2])
    landmarks = _landmarks(boxes, marks).tolist()
    boxes = _apply_offsets(boxes, offsets)
    for i in _nms_min(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), owner.cpu().numpy(), 0.7):
        x1, y1, x2, y2, score = boxes[i].tolist()
        if score >= config.min_score:
            result[int(owner[i])].append(Face((x1, y1, x2, y2), score, [tuple(p) for p in landmarks[i]]))


@torch.inference_mode()
def follow(frames: np.ndarray, before: list[list[Face]], nets: FaceNets, config: FaceConfig) -> list[list[Face]]:
    """frames uint8 [F, 3, H, W] RGB and, per frame, the faces of the frame sampled just before it
    -> per frame, those faces found again, best first. First ONet alone re-reads each face's box
    (made square): enough for a face that moved a little. A face it does not find where the
    tracker would continue it (IoU >= track_iou) is searched for by full detection in a window
    three times its side around where it was, for faces from half its size up."""
    result: list[list[Face]] = [[] for _ in range(len(frames))]
    pairs = [(k, face.box) for k, faces in enumerate(before) for face in faces]
    if pairs:
        images = torch.from_numpy(np.ascontiguousarray(frames)).to(nets.device, torch.float32)
        boxes = _square(torch.tensor([box for _, box in pairs], dtype=torch.float32, device=nets.device))
        owner = torch.tensor([k for k, _ in pairs], device=nets.device)
        _last_stage(images, boxes, owner, nets, config, result)
    for k, box in pairs:
        if not any(iou(box, face.box) >= config.track_iou for face in result[k]):
            result[k] = _best_first(result[k] + _detect_near(frames[k], box, nets, config))
    return result


def _detect_near(frame: np.ndarray, box: tuple[float, float, float, float], nets: FaceNets,
                 config: FaceConfig) -> list[Face]:
    """Full detection in the window of one frame uint8 [3, H, W] three times a box's side about
    its centre, for faces from half its side up; boxes and landmarks in the frame's px."""
    height, width = frame.shape[1:]
    side = max(box[2] - box[0], box[3] - box[1])
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left, top = max(int(cx - 1.5 * side), 0), max(int(cy - 1.5 * side), 0)
    right, bottom = min(int(cx + 1.5 * side) + 1, width), min(int(cy + 1.5 * side) + 1, height)
    # max_side only bounds min_face_px here: the window is read as it is
    near = dataclasses.replace(config, min_face_px=max(12, int(side / 2)), max_side=max(config.max_side, int(side) + 2))
    faces = detect(np.ascontiguousarray(frame[None, :, top:bottom, left:right]), nets, near)[0]
    for face in faces:
        face.box = (face.box[0] + left, face.box[1] + top, face.box[2] + left, face.box[3] + top)
        face.landmarks = [(x + left, y + top) for x, y in face.landmarks]
    return faces


def _best_first(faces: list[Face]) -> list[Face]:
    """One frame's faces, best score first, without the ones that MTCNN's last NMS would drop
    (a box mostly inside a better one)."""
    if len(faces) < 2:
        return faces
    boxes, scores = np.array([f.box for f in faces]), np.array([f.score for f in faces])
    return [faces[i] for i in _nms_min(boxes, scores, np.zeros(len(faces), np.int64), 0.7)]


def detect_and_follow(frames: np.ndarray, nets: FaceNets, config: FaceConfig) -> list[list[Face]]:
    """frames uint8 [F, 3, H, W] RGB in time order -> per frame, its faces: full detection on frames
    0, N, 2N, ... (N = config.detect_every), and on each frame between, the faces of the frame
    before it followed (follow). N = 1 detects on every frame."""
    found: list[list[Face]] = [[] for _ in range(len(frames))]
    keys = list(range(0, len(frames), config.detect_every))
    for k, faces in zip(keys, detect(frames[keys], nets, config), strict=True):
        found[k] = faces
    for step in range(1, config.detect_every):  # all the frames `step` after a full detection at once
        between = [k + step for k in keys if k + step < len(frames)]
        if between:
            for k, faces in zip(between, follow(frames[between], [found[k - 1] for k in between], nets, config),
                                strict=True):
                found[k] = faces
    return found


# ---- tracks and the window summary ----

def _area(box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def track(faces_per_frame: list[list[Face]], times: list[float], config: FaceConfig) -> list[FaceTrack]:
    """Faces of frames in time order -> tracks. Each frame, the (track, face) pairs are taken
    best overlap first; a face left over starts a track; a track unseen for more than
    `max_gap_frames` sampled frames ends."""
    tracks: list[FaceTrack] = []
    last_seen: dict[int, int] = {}
    for k, (faces, t) in enumerate(zip(faces_per_frame, times, strict=True)):
        live = [tr for tr in tracks if k - last_seen[tr.track] <= config.max_gap_frames + 1]
        pairs = sorted(((iou(tr.faces[-1].box, f.box), i, j) for i, tr in enumerate(live) for j, f in enumerate(faces)),
                       reverse=True)
        taken_tracks, taken_faces = set(), set()
        for overlap, i, j in pairs:
            if overlap < config.track_iou or i in taken_tracks or j in taken_faces:
                continue
            taken_tracks.add(i)
            taken_faces.add(j)
            live[i].times.append(t)
            live[i].faces.append(faces[j])
            last_seen[live[i].track] = k
        for j, face in enumerate(faces):
            if j not in taken_faces:
                tracks.append(FaceTrack(track=len(tracks), times=[t], faces=[face]))
                last_seen[len(tracks) - 1] = k
    return tracks


def read_faces(frames: np.ndarray, nets: FaceNets, config: FaceConfig) -> list[list[Face]]:
    """Frames uint8 [F, 3, H, W] RGB -> per frame, its faces with their expression probabilities."""
    found = detect_and_follow(np.asarray(frames), nets, config)
    every = [face for faces in found for face in faces]
    if every:  # one batch for all the faces of these frames
        squares = [sq for frame, faces in zip(frames, found, strict=True)
                   for sq in face_squares(frame, [f.box for f in faces], config.margin)]
        probs = expressions(grey_inputs(squares), nets)
        for face, p, picture in zip(every, probs, thumbnails(squares), strict=True):
            face.emotion_probs, face.thumbnail = p.tolist(), picture
    return found


def face_columns(faces_per_frame: list[list[Face]], times: list[float], config: FaceConfig) -> dict:
    """A row's faces per sampled frame -> its face columns: `faces` (every track's summary, main
    face first), `face_count`, and `face_emotion` / `face_emotion_probs` of the main face (None
    when no face was found)."""
    tracks = sorted(track(faces_per_frame, times, config), key=lambda tr: -tr.area_time)
    summaries = [tr.summary(config.sample_fps) for tr in tracks]
    main = summaries[0] if summaries else None
    return {"faces": summaries, "face_count": len(summaries),
            "face_emotion": main["emotion"] if main else None,
            "face_emotion_probs": main["emotion_probs"] if main else None}


def faces_in_window(frames: np.ndarray, times: np.ndarray, nets: FaceNets, config: FaceConfig | None = None) -> dict:
    """A row's sampled frames uint8 [F, 3, H, W] at times [F] s -> its face columns (face_columns)."""
    config = config or FaceConfig()
    return face_columns(read_faces(frames, nets, config), [float(t) for t in times], config)


def sample_times(start: float, end: float, config: FaceConfig) -> np.ndarray:
    """float64 [F] seconds at which a window [start, end) is looked at: sample_fps frames per
    second at the middles of equal slices, at least one."""
    n = max(1, int(round((end - start) * config.sample_fps)))
    return start + (np.arange(n) + 0.5) * (end - start) / n


def faces_in_source(source, start: float, end: float, nets: FaceNets, config: FaceConfig,
                    decode: DecodeConfig) -> dict | None:
    """The face columns (face_columns) of [start, end) s of a media source (path, file or
    bytes): its frames decoded CHUNK_S seconds at a time, sample_fps per second, aspect ratio
    kept with the longer side at most config.max_side (`decode` gives the limits). None when
    the source has no video: no visual signal. Raises MediaError when the video cannot be read."""
    decode = dataclasses.replace(decode, max_side=config.max_side)
    wanted = sample_times(start, end, config)  # the row's frames, shared out among the chunks
    faces: list[list[Face]] = []
    times: list[float] = []
    has_video = False  # stays False for an empty window
    for a in np.arange(start, end, CHUNK_S):
        b = min(float(a) + CHUNK_S, end)
        n = int(((wanted >= a) & (wanted < b)).sum())
        if not n:
            continue
        clip = decode_clip(source, float(a), b, dataclasses.replace(decode, num_frames=n))
        if clip.width is None:  # no video stream at all: nothing more to decode (an audio file costs one chunk)
            return None
        has_video = True
        if clip.frames is not None:
            faces += read_faces(clip.frames, nets, config)
            times += [float(t) for t in clip.frame_times]
    return face_columns(faces, times, config) if has_video else None



def no_faces(error: str | None = None) -> dict:
    """The face columns of a row whose faces were not read (no video, an error, faces off);
    `face_error` says why when something went wrong."""
    return {"faces": None, "face_count": None, "face_emotion": None, "face_emotion_probs": None, "face_error": error}


def row_faces(source, start: float | None, end: float | None, nets: FaceNets, config: FaceConfig,
              decode: DecodeConfig) -> dict:
    """A row's FACE_COLUMNS for [start, end) s of a source (None: from the beginning, to the end).
    Never raises: a source that cannot be read gets null columns and `face_error` naming why."""
    from mmsa_ray.media import MediaError, probe_duration

    try:
        end = probe_duration(source, decode) if end is None else end
        columns = faces_in_source(source, start or 0.0, end, nets, config, decode)
    except MediaError as e:
        return no_faces(getattr(e, "cause", None) or str(e))
    except Exception as e:  # noqa: BLE001 - the row keeps its label; the reason is recorded
        return no_faces(f"{type(e).__name__}: {e}")
    return no_faces() if columns is None else {**columns, "face_error": None}
