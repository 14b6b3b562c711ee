"""Faces: the ported MTCNN and FER-2013 networks against the packages' own outputs, real faces
(scikit-image's pictures) moved across an H.264 clip -> tracks kept apart and the smile read as
joy, no face -> no video signal, small faces, tracking rules and bad input. No Ray here."""

from __future__ import annotations

import json

import mediagen
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmsa_ray import face_models
from mmsa_ray.faces import Face, FaceConfig, detect, detect_and_follow, faces_in_window, iou, sample_times, track
from mmsa_ray.labels import EMOTIONS
from mmsa_ray.media import DecodeConfig, decode_clip


@pytest.fixture(scope="module")
def nets() -> face_models.FaceNets:
    return face_models.load_face_nets()


def thumbnail_pixels(uri: str) -> np.ndarray:
    """A "data:image/jpeg;base64,..." thumbnail -> float [H, W, 3] RGB."""
    import base64
    import io

    from PIL import Image

    assert uri.startswith("data:image/jpeg;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), float)


def as_frames(picture: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [1, 3, H, W]."""
    return np.ascontiguousarray(picture.transpose(2, 0, 1)[None])


def test_port_matches_the_packages_outputs(nets):
    """check.safetensors holds inputs with facenet-pytorch's and Keras' outputs on them
    (written by tools/convert_face_models.py); the shipped weights must reproduce them."""
    check = json.loads((face_models.WEIGHTS_DIR / "check.json").read_text())
    assert max(check["max_abs_difference"].values()) <= check["tolerance"] == 1e-3
    ref = load_file(str(face_models.WEIGHTS_DIR / "check.safetensors"))
    with torch.inference_mode():
        for name in ("pnet", "rnet", "onet"):
            outputs = getattr(nets, name)(ref[f"{name}.input"])
            for k, got in enumerate(outputs):
                assert torch.allclose(got, ref[f"{name}.output{k}"], atol=1e-3), (name, k)
        got = nets.expression(ref["expression.input"])
    assert torch.allclose(got, ref["expression.output"], atol=1e-3)
    assert got.shape == (4, 7) and torch.allclose(got.sum(1), torch.ones(4), atol=1e-5)

    found = detect(as_frames(mediagen.skimage_picture("astronaut.png")), nets, FaceConfig(min_score=0.7))[0]
    found.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))  # facenet-pytorch: largest first
    np.testing.assert_allclose([f.box for f in found], ref["astronaut.boxes"].numpy(), atol=1e-3)
    np.testing.assert_allclose([f.score for f in found], ref["astronaut.probs"].numpy(), atol=1e-3)
    np.testing.assert_allclose([f.landmarks for f in found], ref["astronaut.landmarks"].numpy(), atol=1e-3)


def test_two_faces_tracked_apart_and_the_smile_reads_joy(tmp_path, nets):
    pasted = mediagen.write_faces_video(tmp_path / "two.mp4", heads=2)
    clip = decode_clip(str(tmp_path / "two.mp4"), config=DecodeConfig(num_frames=8, height=270, width=480))
    out = faces_in_window(clip.frames, clip.frame_times, nets)

    assert out["face_count"] == 2 and [f["track"] for f in out["faces"]] == [0, 1]
    astronaut, cameraman = out["faces"]  # main face first: the larger one, on screen as long
    assert astronaut["seconds"] == cameraman["seconds"] == 4.0  # 8 frames at 2 per second, each seen in all
    assert (astronaut["start"], astronaut["end"]) == pytest.approx((clip.frame_times[0], clip.frame_times[-1]))
    # each track's largest box lies inside the head it follows (the astronaut's at her largest, the last frames)
    for summary, head in ((astronaut, pasted[-1][0]), (cameraman, pasted[-1][1])):
        x1, y1, x2, y2 = summary["box"]
        assert head[0] - 2 <= x1 < x2 <= head[2] + 2 and head[1] - 2 <= y1 < y2 <= head[3] + 2, (summary, head)
    assert out["face_emotion"] == "joy" == astronaut["emotion"]
    assert out["face_emotion_probs"] == astronaut["emotion_probs"] and len(astronaut["emotion_probs"]) == len(EMOTIONS)
    assert astronaut["emotion_probs"][EMOTIONS.index("joy")] > 0.9
    assert sum(cameraman["emotion_probs"]) == pytest.approx(1.0, abs=1e-4) and cameraman["emotion"] != "joy"
    # each track's thumbnail: its largest face as a 40 px JPEG, in colour (the cameraman's photo is grey)
    spread = []
    for summary in (astronaut, cameraman):
        picture = thumbnail_pixels(summary["thumbnail"])
        assert picture.shape == (40, 40, 3)
        spread.append(float(np.abs(picture - picture.mean(axis=2, keepdims=True)).mean()))
    assert spread[0] > 10 > 3 > spread[1], spread


def test_a_rotated_phone_video_is_read_upright(tmp_path, nets):
    """Portrait video stored sideways with display rotation (as phones write it): the frames are
    turned upright before detection, so the face is found and boxed as displayed."""
    from mmsa_ray.faces import FaceConfig, faces_in_source

    pasted = mediagen.write_faces_video(tmp_path / "phone.mp4", heads=1, seconds=2.0, width=300, height=480,
                                        rotated=True)
    out = faces_in_source(str(tmp_path / "phone.mp4"), 0.0, 2.0, nets, FaceConfig(), DecodeConfig())
    assert out["face_count"] == 1 and out["face_emotion"] == "joy"
    x1, y1, x2, y2 = out["faces"][0]["box"]  # where the head is in the portrait picture, not the stored one
    head = pasted[-1][0]
    assert head[0] - 2 <= x1 < x2 <= head[2] + 2 and head[1] - 2 <= y1 < y2 <= head[3] + 2
    upright = decode_clip(str(tmp_path / "phone.mp4"), config=DecodeConfig(num_frames=4, max_side=640)).frames
    assert upright.shape == (4, 3, 480, 300)  # stored 480 x 300, read as displayed


def test_a_clip_without_a_face_has_no_video_signal(tmp_path, nets):
    mediagen.write_faces_video(tmp_path / "none.mp4", heads=0, seconds=2.0)
    clip = decode_clip(str(tmp_path / "none.mp4"), config=DecodeConfig(num_frames=4, height=270, width=480))
    assert faces_in_window(clip.frames, clip.frame_times, nets) == {
        "faces": [], "face_count": 0, "face_emotion": None, "face_emotion_probs": None}


def test_frames_between_full_detections_follow_the_faces(tmp_path, nets):
    """detect_every 2: the frames between full detections re-read the faces already found (ONet
    alone, or detection around where they were when it loses them) and find the same faces as
    full detection on every frame, also one that moved half its width; a face that comes on
    screen between full detections is found at the next one."""
    mediagen.write_faces_video(tmp_path / "two.mp4", heads=2)  # the astronaut moves right and grows
    frames = decode_clip(str(tmp_path / "two.mp4"), config=DecodeConfig(num_frames=8, height=270, width=480)).frames
    every = detect_and_follow(frames, nets, FaceConfig(detect_every=1))
    followed = detect_and_follow(frames, nets, FaceConfig(detect_every=2))
    assert [len(f) for f in every] == [len(f) for f in followed] == [2] * 8
    assert followed[0::2] == every[0::2]  # frames 0, 2, ...: full detection, the same faces
    for full, kept in zip(every[1::2], followed[1::2], strict=True):
        for a, b in zip(sorted(full, key=lambda f: f.box[0]), sorted(kept, key=lambda f: f.box[0]), strict=True):
            assert iou(a.box, b.box) > 0.75 and b.score >= 0.9, (a, b)

    astronaut = as_frames(mediagen.skimage_picture("astronaut.png"))  # her face is about 88 px wide
    moved = np.zeros((2, 3, 512, 640), np.uint8)
    moved[0, :, :, :512], moved[1, :, :, 45:557] = astronaut[0], astronaut[0]
    jumped = detect_and_follow(moved, nets, FaceConfig(detect_every=2))
    assert [len(f) for f in jumped] == [1, 1] and jumped[1][0].box[0] - jumped[0][0].box[0] == pytest.approx(45, abs=3)
    arriving = np.concatenate([np.zeros_like(astronaut), astronaut, astronaut, astronaut])
    assert [len(f) for f in detect_and_follow(arriving, nets, FaceConfig(detect_every=2))] == [0, 0, 1, 1]
    assert [len(f) for f in detect_and_follow(arriving, nets, FaceConfig(detect_every=1))] == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="detect_every must be a whole number of frames >= 1, got 0"):
        FaceConfig(detect_every=0)


@pytest.mark.parametrize("face_px", [40, 60])
def test_faces_down_to_min_face_px_are_found(nets, face_px):
    from PIL import Image

    picture = mediagen.skimage_picture("astronaut.png")  # her face box is about 88 px wide
    side = round(512 * face_px / 88)
    small = np.asarray(Image.fromarray(picture).resize((side, side), Image.BILINEAR))
    found = detect(as_frames(small), nets)[0]
    assert len(found) == 1 and found[0].score > 0.95
    assert abs((found[0].box[2] - found[0].box[0]) - face_px) < 0.25 * face_px


def face(x: float, y: float, side: float = 40.0) -> Face:
    return Face(box=(x, y, x + side, y + side), score=0.99, landmarks=[], emotion_probs=[1 / 7] * 7)


def test_tracks_follow_overlap_and_end_after_a_gap():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    config = FaceConfig()  # track_iou 0.3, one missed frame allowed
    frames = [[face(0, 0), face(200, 0)], [face(5, 0), face(195, 0)], [face(205, 0)], [face(10, 0), face(190, 0)],
              [], [], [face(15, 0)]]
    tracks = track(frames, [0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25], config)
    # the left face misses one frame and goes on; after two missed frames it is a new track
    assert [(t.track, t.times) for t in tracks] == [(0, [0.25, 0.75, 1.75]), (1, [0.25, 0.75, 1.25, 1.75]),
                                                   (2, [3.25])]
    assert [f.box[0] for f in tracks[1].faces] == [200, 195, 205, 190]


def test_sample_times_and_bad_input(nets, tmp_path):
    np.testing.assert_allclose(sample_times(1.0, 4.2, FaceConfig()), 1.0 + (np.arange(6) + 0.5) * 3.2 / 6)
    assert len(sample_times(5.0, 5.1, FaceConfig())) == 1
    with pytest.raises(ValueError, match="frames must be uint8 \\[F, 3, H, W\\] RGB, got float32"):
        detect(np.zeros((1, 3, 64, 64), np.float32), nets)
    with pytest.raises(ValueError, match="frames must be uint8"):
        detect(np.zeros((64, 64, 3), np.uint8), nets)
    assert detect(np.zeros((2, 3, 30, 30), np.uint8), nets) == [[], []]  # smaller than the smallest face
    with pytest.raises(ValueError, match="sample_fps must be a positive"):
        FaceConfig(sample_fps=0)
    with pytest.raises(ValueError, match="min_face_px must be at least 12"):
        FaceConfig(min_face_px=8)
    with pytest.raises(FileNotFoundError, match="the face networks' weights are missing: .*model.safetensors"):
        face_models.load_face_nets(tmp_path)


def test_fusion_weights_and_log_linear_pooling():
    from mmsa_ray.fusion import fuse, parse_fuse

    assert parse_fuse("text=1, face=0.5") == {"text": 1.0, "face": 0.5}
    for spec, message in (("text=1,voice=2", "NAME in \\['face', 'text'\\], got 'voice=2'"),
                          ("face", "NAME=WEIGHT pairs"), ("face=lots", "weight of face must be a number"),
                          ("face=-1", "finite number >= 0"), ("text=0,face=0", "at least one weight above 0")):
        with pytest.raises(ValueError, match=message):
            parse_fuse(spec)
    text = [0.1, 0.05, 0.05, 0.2, 0.4, 0.1, 0.1]
    face = [0.02, 0.01, 0.01, 0.9, 0.02, 0.02, 0.02]
    got = fuse({"emotion_probs": text, "face_emotion_probs": face}, {"text": 1.0, "face": 0.5})
    want = (np.asarray(text) * np.sqrt(face)) ** (1 / 1.5)  # weights normalized: text^(2/3) face^(1/3)
    np.testing.assert_allclose(got["fused_emotion_probs"], want / want.sum(), rtol=1e-9)
    assert got["fused_emotion"] == "joy"  # neutral 0.4 alone; the smiling face tips it
    alone = fuse({"emotion_probs": None, "face_emotion_probs": face}, {"text": 1.0, "face": 0.5})
    np.testing.assert_allclose(alone["fused_emotion_probs"], face, rtol=1e-9)
    assert fuse({"emotion_probs": None, "face_emotion_probs": None}, {"text": 1.0}) == {
        "fused_emotion": None, "fused_emotion_probs": None}
