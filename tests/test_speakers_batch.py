"""Speakers in the batch jobs, as a user runs them: `mmsa-ray transcribe` over a folder of
two-voice dialogues (audio and video) finds each file's speakers, gives the same voice the
same archive-wide id in every file, names enrolled voices, and keeps every id on the next
run, when a new file brings a new voice. (Label's rows and a kill -9: test_utterances.py.)"""

from __future__ import annotations

import shutil

import mediagen
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from mmsa_ray.batch import transcribe
from mmsa_ray.batch.speakers import SPEAKERS_FILE
from mmsa_ray.batch.utterances import UTTERANCE_SCHEMA

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
              pytest.mark.slow]

MALE, FEMALE, THIRD = mediagen.VOICES
S = mediagen.TALK_SENTENCES


def test_transcribe_finds_speakers_across_files_names_and_keeps_them(ray_local, tmp_path, capsys):
    src, out, people = tmp_path / "in", tmp_path / "out", tmp_path / "people"
    src.mkdir()
    audio, _ = mediagen.dialogue([((MALE, FEMALE)[i % 2], S[i]) for i in range(4)], tmp_path)
    mediagen.write_audio(src / "call.wav", rate=16000, channels=1, samples=audio[None])
    audio, _ = mediagen.dialogue([((FEMALE, MALE)[i % 2], S[10 + i]) for i in range(4)], tmp_path)
    mediagen.write_video(src / "interview.mp4", seconds=len(audio) / 16000, width=64, height=48, fps=10,
                         audio=(16000, 1, "aac"), audio_samples=audio[None])
    (people / "alice").mkdir(parents=True)
    audio, _ = mediagen.dialogue([(FEMALE, S[25]), (FEMALE, S[26])], tmp_path)
    mediagen.write_audio(people / "alice" / "hello.wav", rate=16000, channels=1, samples=audio[None])

    args = [str(src), "--output", str(out), "--speakers-dir", str(people)]
    assert transcribe.main(args) == 0
    printed = capsys.readouterr().out
    assert "speakers: 2 across 2 files (2 new this run; spk" in printed and "= alice)" in printed
    rows = pads.dataset(str(out), format="parquet", schema=UTTERANCE_SCHEMA).to_table().to_pylist()
    assert len(rows) == 8 and all(r["speaker"] in ("S1", "S2") and r["speaker_confidence"] > 0.5 for r in rows)
    for f in ("call.wav", "interview.mp4"):
        said = sorted((r for r in rows if r["file_id"] == f), key=lambda r: r["start"])
        assert [r["speaker"] for r in said] == ["S1", "S2", "S1", "S2"], f
    ids = {(a["file_id"], a["speaker"]): a for a in pq.read_table(out / SPEAKERS_FILE).to_pylist()}
    assert ids[("call.wav", "S1")]["speaker_id"] == ids[("interview.mp4", "S2")]["speaker_id"]  # the male voice
    assert ids[("call.wav", "S2")]["name"] == ids[("interview.mp4", "S1")]["name"] == "alice"
    assert ids[("call.wav", "S1")]["name"] is None

    # a new file with a new voice: the ids already given stay, the new voice gets the next
    audio, _ = mediagen.dialogue([((THIRD, MALE)[i % 2], S[20 + i]) for i in range(4)], tmp_path)
    mediagen.write_audio(src / "panel.wav", rate=16000, channels=1, samples=audio[None])
    assert transcribe.main(args) == 0
    assert "speakers: 3 across 3 files (1 new this run" in capsys.readouterr().out
    again = {(a["file_id"], a["speaker"]): a for a in pq.read_table(out / SPEAKERS_FILE).to_pylist()}
    assert {k: a["speaker_id"] for k, a in again.items() if k in ids} == {k: a["speaker_id"] for k, a in ids.items()}
    assert again[("panel.wav", "S2")]["speaker_id"] == ids[("call.wav", "S1")]["speaker_id"]
    assert again[("panel.wav", "S1")]["speaker_id"] == "spk3" and again[("panel.wav", "S1")]["name"] is None


def test_speaker_flags_and_a_wrong_enrolment_folder(tmp_path, capsys):
    config = transcribe.parse_args(["in", "--output", "out", "--num-speakers", "2", "--speakers", "on"])
    assert config.speakers.num_speakers == 2 and config.speakers.enabled
    assert not transcribe.parse_args(["in", "--output", "out", "--speakers", "off"]).speakers.enabled
    with pytest.raises(SystemExit):
        transcribe.parse_args(["in", "--output", "out", "--min-speakers", "3", "--max-speakers", "2"])
    assert "min_speakers <= max_speakers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        transcribe.parse_args(["in", "--output", "out", "--speakers-dir", str(tmp_path / "nobody")])
    assert f"--speakers-dir {tmp_path / 'nobody'}: not a directory" in capsys.readouterr().err
