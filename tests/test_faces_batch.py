"""Faces in `mmsa-ray label`, as a user runs it: a folder with a two-face video that speaks, a
video without a face and an audio-only file -> every utterance row of the video carries both
faces with the smile read as joy, the face-free video says 0 faces and no face emotion, the
audio file has no face columns at all; the face flags map onto the config and refuse bad values."""

from __future__ import annotations

import shutil

import mediagen
import numpy as np
import pyarrow.dataset as pads
import pytest

from mmsa_ray.batch import LABEL_SCHEMA
from mmsa_ray.batch import label as label_job
from mmsa_ray.batch.faces import FACE_FIELDS
from mmsa_ray.faces import FACE_COLUMNS
from mmsa_ray.report import html as report

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
              pytest.mark.slow]


def test_label_reads_faces_per_utterance(ray_local, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    speech, spans = mediagen.spoken(list(mediagen.TALK_SENTENCES[:3]))
    pasted = mediagen.write_faces_video(src / "two.mp4", heads=2, seconds=len(speech) / 16000, audio=speech)
    mediagen.write_faces_video(src / "empty_room.mp4", heads=0, seconds=3.0)
    mediagen.write_audio(src / "voice.wav", rate=16000, channels=1, samples=speech[None])

    assert label_job.main([str(src), "--output", str(out), "--fuse", "text=1,face=1"]) == 0
    assert "labeled 6, no signal 1, failed 0" in capsys.readouterr().out
    rows = {r["id"]: r for r in pads.dataset(str(out), format="parquet", schema=LABEL_SCHEMA).to_table().to_pylist()}

    video = sorted((r for r in rows.values() if r["uri"].endswith("two.mp4")), key=lambda r: r["start"])
    assert len(video) == len(spans) == 3
    right = max(x2 for boxes in pasted for x1, y1, x2, y2 in boxes[:1])  # the astronaut never goes past this
    for row in video:
        assert row["face_count"] == 2 and row["face_error"] is None and row["face_emotion"] == "joy"
        astronaut, cameraman = row["faces"]
        assert astronaut["box"][2] <= right + 2 < cameraman["box"][0]  # main face first, the two kept apart
        assert astronaut["emotion_probs"] == row["face_emotion_probs"] and len(row["face_emotion_probs"]) == 7
        # 2 frames per second over the utterance, every one showing both faces
        assert astronaut["seconds"] == cameraman["seconds"] == pytest.approx(row["end"] - row["start"], abs=0.51)
        assert row["start"] <= astronaut["start"] <= astronaut["end"] <= row["end"]
        assert all(t["thumbnail"].startswith("data:image/jpeg;base64,") for t in (astronaut, cameraman))
        text, face = (np.clip(np.asarray(row[k], float), 1e-12, 1) for k in ("emotion_probs", "face_emotion_probs"))
        mean = np.sqrt(text * face)  # equal weights: the geometric mean (a probability of 0 floored at 1e-12)
        np.testing.assert_allclose(row["fused_emotion_probs"], mean / mean.sum(), atol=1e-6)
    empty = rows["empty_room.mp4"]
    assert (empty["face_count"], empty["faces"], empty["face_emotion"], empty["no_label_reason"]) == (
        0, [], None, "no speech")
    audio_only = [r for r in rows.values() if r["uri"].endswith("voice.wav")]
    assert len(audio_only) == 3 and all(r["faces"] is None and r["face_count"] is None for r in audio_only)
    # fusion: a row with one opinion keeps it, a row with none gets none
    assert all(r["fused_emotion"] == r["emotion"] for r in audio_only) and empty["fused_emotion"] is None

    # the report: each line says the main face's expression; the summary counts faces and disagreements
    assert report.main([str(out), "--output", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    disagree = sum(r["text_emotion"] != "joy" for r in video)
    assert (f"A face was found in 3 of 4 rows with video; main faces: joy 3. face and text disagree on {disagree} "
            "of 3 rows that have both") in page
    assert "4 rows carry a fused emotion" not in page and "6 rows carry a fused emotion (--fuse)" in page
    assert page.count('"face":"joy"') == page.count('"faces":2') == 3 and page.count('"faces":0') == 1
    assert page.count('"thumbs":["data:image/jpeg;base64,') == 3  # the two tracks' thumbnails of each video row


def test_face_flags(tmp_path, capsys):
    assert tuple(name for name, _ in FACE_FIELDS) == FACE_COLUMNS  # the Parquet columns are the core's
    config = label_job.parse_args([str(tmp_path), "--output", str(tmp_path / "o"), "--faces", "off",
                                   "--face-actors", "1,3", "--face-gpus-per-actor", "0.5", "--face-fps", "1",
                                   "--min-face", "60", "--face-max-side", "960", "--face-detect-every", "3"])
    assert not config.faces.enabled and config.faces.actors == (1, 3) and config.faces.gpus_per_actor == 0.5
    assert config.fuse is None
    face = config.faces.face
    assert (face.sample_fps, face.min_face_px, face.max_side, face.detect_every) == (1.0, 60, 960, 3)
    assert label_job.parse_args([str(tmp_path), "--output", str(tmp_path / "o")]).faces.enabled
    for flags, message in ((["--min-face", "8"], "min_face_px must be at least 12"),
                           (["--face-fps", "0"], "sample_fps must be a positive"),
                           (["--face-detect-every", "0"], "detect_every must be a whole number of frames >= 1, got 0"),
                           (["--face-max-side", "60"], "max_side must be at least twice min_face_px (80), got 60"),
                           (["--faces", "maybe"], "invalid choice: 'maybe'"),
                           (["--fuse", "text=1,voice=1"], "NAME in ['face', 'text'], got 'voice=1'")):
        with pytest.raises(SystemExit):
            label_job.parse_args([str(tmp_path), "--output", str(tmp_path / "o"), *flags])
        assert message in capsys.readouterr().err
