"""mmsa_ray.train.meld on the real MELD CSVs (skipped where absent) and on tiny synthetic roots."""

import csv
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmsa_ray.labels import EMOTIONS
from mmsa_ray.train import meld
from mmsa_ray.train.meld import CSV_COLUMNS, MeldFormatError, read_meld
from mmsa_ray.train.sample_data import write_clip


def _real_meld_dir() -> Path | None:
    for candidate in (os.environ.get("MELD_DIR"), Path(__file__).resolve().parents[2] / "shared" / "meld"):
        if candidate and (Path(candidate) / "train_sent_emo.csv").is_file():
            return Path(candidate)
    return None


REAL = _real_meld_dir()
needs_real = pytest.mark.skipif(
    REAL is None, reason="MELD CSVs not found in $MELD_DIR or ../shared/meld (they are not shipped with the repo)"
)


@pytest.fixture(scope="module")
def real_train():
    return read_meld(REAL, "train")


# ---------------------------------------------------------------- real MELD CSVs


@needs_real
def test_real_train_counts_and_text_only(real_train):
    s = real_train
    assert len(s) == 9989
    assert s.emotion_counts() == {
        "anger": 1109, "disgust": 271, "fear": 268, "joy": 1743,
        "neutral": 4710, "sadness": 683, "surprise": 1205,
    }
    assert s.sentiment_counts() == {"negative": 2945, "neutral": 4710, "positive": 2334}
    # No clip folder next to the CSVs: every record is text-only, and the report says so.
    assert s.text_only and not s.clip_dir_exists
    assert s.videos_found == 0 and len(s.missing) == 9989
    assert all(r.path is None for r in s.records)
    assert "videos absent: text-only records" in s.summary()
    assert "neutral 4710" in s.summary()
    assert len({r.id for r in s.records}) == 9989


@needs_real
def test_real_dev_counts():
    s = read_meld(REAL, "dev")
    assert len(s) == 1109
    assert s.emotion_counts() == {
        "anger": 153, "disgust": 22, "fear": 40, "joy": 163,
        "neutral": 470, "sadness": 111, "surprise": 150,
    }
    assert s.sentiment_counts() == {"negative": 406, "neutral": 470, "positive": 233}
    assert s.records[1].id == "dev/dia0_utt1"
    assert (s.records[1].transcript, s.records[1].emotion, s.records[1].sentiment) == ("What?", "surprise", "negative")


@needs_real
def test_real_known_rows(real_train):
    first = real_train.records[0]
    assert first.id == "train/dia0_utt0"
    # typographic apostrophe kept as written
    assert first.transcript == "also I was the point person on my company’s transition from the KL-5 to GR-6 system."
    assert (first.speaker, first.emotion, first.sentiment) == ("Chandler", "neutral", "neutral")
    assert (first.dialogue_id, first.utterance_id, first.season, first.episode) == (0, 0, 8, 21)
    assert first.start_s == pytest.approx(16 * 60 + 16.059)
    assert first.end_s == pytest.approx(16 * 60 + 21.731)
    assert (first.emotion_index, first.sentiment_index) == (EMOTIONS.index("neutral"), 1)
    last = real_train.records[-1]
    assert last.id == "train/dia1038_utt17"
    assert last.transcript == 'That was a good one. For a second there, I was like, "whoa."'
    assert (last.start_s, last.end_s) == (pytest.approx(68.401), pytest.approx(72.071))


@needs_real
def test_real_missing_split_names_expected_files():
    # /work/shared/meld has train and dev only.
    if (REAL / "test_sent_emo.csv").exists():
        pytest.skip("this MELD copy has the test CSV")
    with pytest.raises(FileNotFoundError, match="test_sent_emo.csv.*output_repeated_splits_test"):
        read_meld(REAL, "test")


@needs_real
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_real_manifest_round_trip(real_train, tmp_path, suffix):
    path = meld.write_manifest(real_train.records, tmp_path / f"train{suffix}")
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    assert meld.read_manifest(path) == real_train.records
    if suffix == ".parquet":
        table = pq.read_table(path)
        assert table.column_names == list(meld.MANIFEST_COLUMNS)
        assert table.num_rows == 9989
        assert table.column("path").null_count == 9989
        counts = np.bincount(table.column("emotion_index").to_numpy(), minlength=7)
        assert dict(zip(EMOTIONS, counts.tolist(), strict=True)) == real_train.emotion_counts()


# ---------------------------------------------------------------- synthetic roots


def _write_csv(path: Path, rows: list[list[str]], header=CSV_COLUMNS, bom: bool = False) -> None:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _row(sr, text, emotion, sentiment, dia, utt, start="00:00:01,000", end="00:00:03,500", speaker="Ross"):
    return [str(sr), text, speaker, emotion, sentiment, str(dia), str(utt), "1", "2", start, end]


@pytest.fixture
def clip_root(tmp_path):
    """train split: 2 good clips, 1 missing, 1 garbage file, 1 truncated mp4."""
    rows = [
        _row(1, "Hello there.", "neutral", "neutral", 0, 0),
        _row(2, "I’m so happy!", "joy", "positive", 0, 1),
        _row(3, "Where is it?", "fear", "negative", 1, 0),
        _row(4, "Ugh.", "disgust", "negative", 1, 1),
        _row(5, "What?!", "surprise", "positive", 2, 0),
    ]
    _write_csv(tmp_path / "train_sent_emo.csv", rows)
    clips = tmp_path / "train_splits"
    clips.mkdir()
    rng = np.random.default_rng(0)
    write_clip(clips / "dia0_utt0.mp4", "neutral", 1.0, rng)
    write_clip(clips / "dia0_utt1.mp4", "joy", 1.0, rng)
    (clips / "dia1_utt1.mp4").write_bytes(b"this is not an mp4 file" * 10)
    write_clip(clips / "full.mp4", "surprise", 1.0, rng)
    data = (clips / "full.mp4").read_bytes()
    (clips / "dia2_utt0.mp4").write_bytes(data[: len(data) // 2])  # the moov atom is at the end: cut off
    (clips / "full.mp4").unlink()
    (clips / "._dia1_utt0.mp4").write_bytes(b"macOS resource fork")  # must not count as dia1_utt0
    return tmp_path


def test_present_missing_and_corrupt_clips(clip_root):
    s = read_meld(clip_root, "train")
    assert [r.id for r in s.records] == [
        "train/dia0_utt0", "train/dia0_utt1", "train/dia1_utt0", "train/dia1_utt1", "train/dia2_utt0",
    ]
    assert s.videos_found == 4 and s.missing == ["train/dia1_utt0"]
    assert not s.text_only
    assert s.records[0].path == str(clip_root.absolute() / "train_splits" / "dia0_utt0.mp4")
    assert s.records[2].path is None
    assert s.bad is None  # not verified
    summary = s.summary()
    assert "4 found, 1 missing" in summary and "train/dia1_utt0" in summary

    v = read_meld(clip_root, "train", verify=True)
    assert sorted(b.id for b in v.bad) == ["train/dia1_utt1", "train/dia2_utt0"]
    assert all(b.error for b in v.bad)
    assert "unreadable clips: 2" in v.summary()


def test_check_clips_runs_decode_fn_and_records_its_errors(clip_root):
    s = read_meld(clip_root, "train")
    seen = []

    def decode(path):
        seen.append(Path(path).name)
        if path.endswith("dia0_utt1.mp4"):
            raise RuntimeError("decoder says no")

    problems = meld.check_clips(s.records, decode_fn=decode)
    # decode_fn only runs on clips that opened; the missing record is skipped.
    assert seen == ["dia0_utt0.mp4", "dia0_utt1.mp4"]
    by_id = {p.id: p.error for p in problems}
    assert set(by_id) == {"train/dia0_utt1", "train/dia1_utt1", "train/dia2_utt0"}
    assert by_id["train/dia0_utt1"] == "RuntimeError: decoder says no"


def test_text_only_when_folder_absent(tmp_path):
    _write_csv(tmp_path / "dev_sent_emo.csv", [_row(1, "Hi.", "neutral", "neutral", 0, 0)])
    s = read_meld(tmp_path, "dev", verify=True)
    assert s.text_only and s.videos_found == 0 and s.missing == ["dev/dia0_utt0"] and s.bad == []
    assert "videos absent: text-only records" in s.summary()


def test_text_is_kept_but_stripped_and_labels_lowercased(tmp_path):
    rows = [
        _row(1, "  It’s … fine — “really”.  ", " Joy ", "POSITIVE", 0, 0, speaker=" Monica "),
        _row(2, "ThatÂ’s mojibake", "anger", "negative", 0, 1, start="0:00:02.5", end="00:00:04,25"),
        _row(3, "Line one\nline two", "sadness", "negative", 0, 2),
    ]
    _write_csv(tmp_path / "test_sent_emo.csv", rows, bom=True)
    recs = read_meld(tmp_path, "test").records
    assert recs[0].transcript == "It’s … fine — “really”."
    assert (recs[0].speaker, recs[0].emotion, recs[0].sentiment) == ("Monica", "joy", "positive")
    assert recs[1].transcript == "ThatÂ’s mojibake"
    assert (recs[1].start_s, recs[1].end_s) == (2.5, 4.25)
    assert recs[2].transcript == "Line one\nline two"


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        (_row(3, "x", "happy", "positive", 0, 2), "unknown emotion 'happy'"),
        (_row(3, "x", "joy", "good", 0, 2), "unknown sentiment 'good'"),
        (_row(3, "x", "joy", "positive", "zero", 2), "Dialogue_ID 'zero' is not an integer"),
        (_row(3, "x", "joy", "positive", 0, 2, end="16:21"), "EndTime: time '16:21' is not hh:mm:ss,fff"),
        (_row(3, "x", "joy", "positive", 0, 2)[:8], "8 fields, header has 11"),
        (_row(3, "x", "joy", "positive", 0, 1), "duplicate Dialogue_ID 0 / Utterance_ID 1 \\(first on line 3\\)"),
    ],
)
def test_bad_rows_strict_and_lenient(tmp_path, bad_row, reason):
    rows = [
        _row(1, "a", "joy", "positive", 0, 0),
        _row(2, "multi\nline", "joy", "positive", 0, 1),  # lines 3-4: line numbers are physical lines
        bad_row,  # line 5
        _row(4, "d", "anger", "negative", 0, 3),
    ]
    _write_csv(tmp_path / "train_sent_emo.csv", rows)
    csv_path = tmp_path.absolute() / "train_sent_emo.csv"
    with pytest.raises(MeldFormatError, match=re.escape(f"{csv_path} line 5: ") + reason):
        read_meld(tmp_path, "train")
    s = read_meld(tmp_path, "train", strict=False)
    assert [r.utterance_id for r in s.records] == [0, 1, 3]
    assert len(s.skipped) == 1 and s.skipped[0].startswith(f"{csv_path} line 5: ")
    assert "skipped rows: 1" in s.summary()


def test_bad_header_and_empty_file(tmp_path):
    header = [c for c in CSV_COLUMNS if c != "Emotion"]
    _write_csv(tmp_path / "train_sent_emo.csv", [], header=header)
    with pytest.raises(MeldFormatError, match=r"line 1: header lacks \['Emotion'\]"):
        read_meld(tmp_path, "train")
    (tmp_path / "train_sent_emo.csv").write_text("")
    with pytest.raises(MeldFormatError, match="empty file"):
        read_meld(tmp_path, "train")


def test_wrong_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match="is not a directory; expected it to hold train_sent_emo.csv and train_splits/"):
        read_meld(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError,
                       match=r"needs .*dev_sent_emo.csv .*dev_splits_complete.*CSVs present in .*: none"):
        read_meld(tmp_path, "dev")
    with pytest.raises(ValueError,
                       match=r"unknown MELD split 'validation'; expected one of \['train', 'dev', 'test'\]"):
        read_meld(tmp_path, "validation")


def test_parse_time():
    assert meld.parse_time("00:16:16,059") == pytest.approx(976.059)
    assert meld.parse_time("1:02:03,5") == pytest.approx(3723.5)
    assert meld.parse_time("00:00:07") == 7.0
    for bad in ("", "16:16,059", "00:61:00,000", "aa:bb:cc,ddd", "00:00:01,-5"):
        with pytest.raises(ValueError, match="is not hh:mm:ss,fff"):
            meld.parse_time(bad)


def test_default_meld_dir(monkeypatch):
    monkeypatch.delenv("MELD_DIR", raising=False)
    assert meld.default_meld_dir() is None
    monkeypatch.setenv("MELD_DIR", "  ")
    assert meld.default_meld_dir() is None
    monkeypatch.setenv("MELD_DIR", "/data/MELD.Raw")
    assert meld.default_meld_dir() == "/data/MELD.Raw"


def test_columns_items_and_csv_manifest(clip_root, tmp_path):
    recs = read_meld(clip_root, "train").records
    cols = meld.to_columns(recs)
    assert list(cols) == list(meld.MANIFEST_COLUMNS)
    assert cols["id"][:2] == ["train/dia0_utt0", "train/dia0_utt1"]
    assert cols["emotion_index"] == [EMOTIONS.index(e) for e in ("neutral", "joy", "fear", "disgust", "surprise")]
    assert cols["sentiment_index"] == [1, 2, 0, 0, 2]
    assert cols["path"][2] is None
    items = meld.to_items(recs)
    assert items[1]["transcript"] == "I’m so happy!" and items[1]["start_s"] == 1.0 and items[1]["end_s"] == 3.5
    path = meld.write_manifest(recs, tmp_path / "out" / "m.csv")
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[2]["path"] == "" and rows[1]["emotion"] == "joy"
    assert meld.read_manifest(path) == recs
    with pytest.raises(ValueError, match=r"must end in \.parquet or \.csv"):
        meld.write_manifest(recs, tmp_path / "m.json")


def test_manifest_errors_name_the_file_row_and_columns(clip_root, tmp_path):
    records = read_meld(clip_root, "train").records[:3]
    good = meld.write_manifest(records, tmp_path / "good.csv")
    text = good.read_text()
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text(text.replace(f",{records[1].emotion},", ",calm,", 1))
    with pytest.raises(meld.MeldFormatError,
                       match=rf"bad_label.csv: row 2 \('{records[1].id}'\): unknown emotion 'calm'"):
        meld.read_manifest(bad_label)
    no_speaker = tmp_path / "no_speaker.csv"
    no_speaker.write_text(text.replace("speaker,", "who,", 1))
    with pytest.raises(meld.MeldFormatError, match=r"no_speaker.csv: missing column\(s\) \['speaker'\]"):
        meld.read_manifest(no_speaker)
    with pytest.raises(FileNotFoundError, match="missing.parquet: no such file"):
        meld.read_manifest(tmp_path / "missing.parquet")
