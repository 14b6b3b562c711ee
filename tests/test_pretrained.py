"""The starter checkpoint shipped in the package (mmsa_ray/pretrained/meld-text): it loads
offline in a fresh process, labels clear sentences as a person would, uses its dialogue
context, runs text alone, and a damaged copy fails naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mmsa_ray import checkpoint
from mmsa_ray.features import collate
from mmsa_ray.pretrained import default_checkpoint

# one clear line per emotion, none of them from MELD
CLEAR = {
    "joy": "I'm so happy for you!",
    "anger": "Get out of my house, now!",
    "disgust": "That's disgusting.",
    "fear": "Oh no, I'm so scared!",
    "sadness": "I'm so sad and lonely.",
    "surprise": "Wow, I did not expect that!",
    "neutral": "I'll get the coffee.",
}
SENTIMENT = {"joy": "positive", "anger": "negative", "disgust": "negative", "sadness": "negative", "neutral": "neutral"}


@pytest.fixture(scope="module")
def starter():
    from mmsa_ray.predict import Predictor

    return Predictor.from_checkpoint(default_checkpoint(), device="cpu")


def _predict(predictor, text, context=None):
    return predictor.predict_batch(collate([predictor.preprocess(None, text, context=context)]))[0]


def test_starter_labels_clear_sentences_in_a_fresh_offline_process(tmp_path):
    code = (
        "import json, sys\n"
        "from mmsa_ray.features import collate\n"
        "from mmsa_ray.predict import Predictor\n"
        "from mmsa_ray.pretrained import default_checkpoint\n"
        "p = Predictor.from_checkpoint(default_checkpoint(), device='cpu')\n"
        "lines = json.loads(sys.argv[1])\n"
        "rows = p.predict_batch(collate([p.preprocess(None, t) for t in lines.values()]))\n"
        "print(json.dumps({e: [r['emotion'], r['sentiment'], r['modalities']] for e, r in zip(lines, rows)}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CLEAR)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert {e: g[0] for e, g in got.items()} == {e: e for e in CLEAR}
    assert all(got[e][1] == s for e, s in SENTIMENT.items())
    assert all(g[2] == ["text"] for g in got.values())


def test_starter_is_text_only_and_says_so(starter):
    meta = json.loads((default_checkpoint() / "config.json").read_text())
    assert meta["model"]["modalities"] == ["text"] and meta["model"]["features"]["context_turns"] == 4
    assert starter.modalities == ("text",) and starter.uses_context and not starter.preprocessing.decodes_media
    # no media is opened: the source is not even read (a path that does not exist works)
    row = _predict(starter, "Yay! We won!")
    assert row["modalities"] == ["text"] and row["audio_emotion"] is None and row["video_emotion"] is None
    f = starter.preprocess("/no/such/file.mp4", "Yay! We won!")
    assert f["video"].shape == (3, 1, 1, 1) and list(f["mask"]) == [1.0, 0.0, 0.0]
    size = sum(p.stat().st_size for p in default_checkpoint().rglob("*") if p.is_file())
    assert size < 25e6


def test_context_changes_an_ambiguous_line(starter):
    """'Great.' after good news is joy; after an angry complaint it is sarcasm."""
    happy = _predict(starter, "Great.", ["I just got the job! They said yes! I'm so happy!"])
    angry = _predict(starter, "Great.", ["You ate my sandwich again! I'm furious with you!"])
    assert (happy["emotion"], happy["sentiment"]) == ("joy", "positive")
    assert angry["sentiment"] == "negative" and angry["emotion"] != "joy"
    # only the last context_turns (4) earlier utterances count
    older = ["You ate my sandwich again! I'm furious with you!", "Can you pass me the salt?", "Here you go.",
             "Is it raining?", "A little."]
    assert (_predict(starter, "Great.", older)["emotion_probs"]
            == _predict(starter, "Great.", older[1:])["emotion_probs"])


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_starter_files_are_named(tmp_path, damage):

    copy = tmp_path / "meld-text"
    shutil.copytree(default_checkpoint(), copy)
    weights = copy / "model.safetensors"
    if damage == "missing":
        weights.unlink()
        with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
            checkpoint.load(copy)
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(ValueError, match=r"model\.safetensors is damaged"):
            checkpoint.load(copy)


def test_default_checkpoint_names_a_missing_file(tmp_path):
    from mmsa_ray.pretrained import STARTER

    shutil.copytree(default_checkpoint(), tmp_path / STARTER)
    assert default_checkpoint(tmp_path) == tmp_path / STARTER
    (tmp_path / STARTER / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meld-text/config\.json is missing"):
        default_checkpoint(tmp_path)


def test_model_card_has_the_command_and_the_numbers():
    card = (default_checkpoint() / "README.md").read_text()
    report = json.loads((default_checkpoint() / "dev_report" / "report.json").read_text())
    assert "mmsa-ray train --meld-dir" in card and "--compact" in card and "GPL-3.0" in card
    for head in ("emotion", "sentiment"):
        assert f"{report['heads'][head]['weighted_f1']:.3f}" in card
    assert (default_checkpoint() / "dev_report" / "confusion_emotion.png").stat().st_size > 1000
