"""Expressions of faces found in frames (mmsa_ray.faces): the square around each box, read by the
FER-2013 mini-Xception as a grey 64x64 picture, and the same square as a small colour thumbnail.

    frame uint8 [3, H, W] RGB, boxes px ─► squares float32 [3, n, n] (margin, frame's mean colour outside)
      ─► grey_inputs float32 [N, 1, 64, 64] in [-1, 1] ─► expressions: probabilities [N, 7], MELD's order
      ─► thumbnails uint8 [N, 40, 40, 3] RGB ─► jpeg_data_uri (what the report and Serve page show)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmsa_ray.face_models import EXPRESSION_SIZE, FER_CLASSES, FaceNets
from mmsa_ray.labels import EMOTIONS

# FER-2013's names -> MELD's; the seven classes are the same emotions.
FER_TO_MELD = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy", "sad": "sadness",
               "surprise": "surprise", "neutral": "neutral"}
_FER_COLUMNS_IN_MELD_ORDER = [FER_CLASSES.index(next(f for f, m in FER_TO_MELD.items() if m == e)) for e in EMOTIONS]
_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as FER-2013's faces were made
THUMBNAIL_PX = 40  # side of a track's thumbnail (a JPEG data URI of about 1.5 KB in the row)


def face_squares(frame: np.ndarray, boxes: list[tuple[float, float, float, float]],
                  margin: float) -> list[torch.Tensor]:
    """RGB squares around each box of one frame uint8 [3, H, W] -> float32 [3, n, n] each (the box
    made square about its centre, grown by `margin` of its side on each side, the part outside
    the frame filled with the frame's mean colour)."""
    if not boxes:  # most frames of a face-free video: not even the frame's mean
        return []
    height, width = frame.shape[1:]
    # numpy's mean, not a BLAS product: OpenBLAS's idle threads spin beside the networks
    fill = torch.from_numpy(frame.reshape(3, -1).mean(axis=1)).float().view(3, 1, 1)
    out = []
    for x1, y1, x2, y2 in boxes:
        side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        n = max(int(round(side)), 1)
        square = fill.expand(3, n, n).clone()
        sx, sy = max(left, 0), max(top, 0)
        ex, ey = min(left + n, width), min(top + n, height)
        if ex > sx and ey > sy:
            square[:, sy - top:ey - top, sx - left:ex - left] = torch.from_numpy(frame[:, sy:ey, sx:ex]).float()
        out.append(square)
    return out


def _resized(squares: list[torch.Tensor], size: int) -> torch.Tensor:
    """[C, n, n] squares -> float32 [N, C, size, size], anti-aliased."""
    return torch.cat([F.interpolate(sq[None], size=(size, size), mode="bilinear", antialias=True,
                                    align_corners=False) for sq in squares])


def grey_inputs(squares: list[torch.Tensor]) -> torch.Tensor:
    """RGB squares -> the expression network's input, float32 [N, 1, 64, 64] in [-1, 1]."""
    if not squares:
        return torch.zeros((0, 1, EXPRESSION_SIZE, EXPRESSION_SIZE))
    grey = torch.tensor(_GREY, dtype=torch.float32).view(3, 1, 1)
    return (_resized([(sq * grey).sum(dim=0, keepdim=True) for sq in squares], EXPRESSION_SIZE) / 255.0 - 0.5) * 2.0


def thumbnails(squares: list[torch.Tensor]) -> np.ndarray:
    """RGB squares -> uint8 [N, THUMBNAIL_PX, THUMBNAIL_PX, 3] RGB."""
    if not squares:
        return np.zeros((0, THUMBNAIL_PX, THUMBNAIL_PX, 3), np.uint8)
    return _resized(squares, THUMBNAIL_PX).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def expression_inputs(frame: np.ndarray, boxes: list[tuple[float, float, float, float]], margin: float) -> torch.Tensor:
    """Grey squares around each box of one frame uint8 [3, H, W] -> float32 [N, 1, 64, 64] in [-1, 1]
    (face_squares made grey)."""
    return grey_inputs(face_squares(frame, boxes, margin))


def jpeg_data_uri(picture: np.ndarray | None) -> str | None:
    """uint8 [H, W, 3] RGB -> "data:image/jpeg;base64,..." (quality 80), what a page shows as is."""
    import base64
    import io

    from PIL import Image

    if picture is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@torch.inference_mode()
def expressions(inputs: torch.Tensor, nets: FaceNets) -> np.ndarray:
    """float32 [N, 1, 64, 64] -> probabilities float32 [N, 7] in MELD's emotion order."""
    if not len(inputs):
        return np.zeros((0, len(EMOTIONS)), np.float32)
    probs = nets.expression(inputs.to(nets.device)).float().cpu().numpy()
    return probs[:, _FER_COLUMNS_IN_MELD_ORDER]
