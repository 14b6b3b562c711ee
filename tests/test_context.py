"""Dialogue context, class weighting, length-bucketed batches and compact checkpoints: the
pieces of the text recipe (issue 16), on the bundled MiniLM and real Ray Train."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsa_ray import checkpoint
from mmsa_ray.features import FeatureConfig, tokenize
from mmsa_ray.model import ModelConfig, MultimodalSentimentModel, build_text_encoder
from mmsa_ray.train import batches, featurize
from mmsa_ray.train import driver as train
from mmsa_ray.train import loop as train_loop
from mmsa_ray.train.meld import ClipRecord, dialogue_context, read_meld, unmarked_share


@pytest.fixture(scope="module")
def tokenizer():
    return build_text_encoder("minilm")[1]


def _record(d: int, u: int, text: str, speaker: str = "Ross", split: str = "train") -> ClipRecord:
    return ClipRecord(id=f"{split}/dia{d}_utt{u}", path=None, transcript=text, speaker=speaker, emotion="neutral",
                      sentiment="neutral", dialogue_id=d, utterance_id=u, season=1, episode=1, start_s=0.0, end_s=1.0,
                      split=split)


def test_dialogue_context_is_the_earlier_turns_of_the_same_dialogue():
    recs = [_record(1, 1, "b", "Joey"), _record(1, 0, "a"), _record(2, 0, "x"), _record(1, 2, "c"), _record(1, 3, "d")]
    assert dialogue_context(recs, 2) == [["a"], [], [], ["a", "b"], ["b", "c"]]
    assert dialogue_context(recs, 0) == [[], [], [], [], []]
    # who said each earlier turn, relative to the current speaker: markers, never names
    assert dialogue_context(recs, 3, speakers=True)[0] == ["[other] a"]  # Joey's turn after Ross's
    assert dialogue_context(recs, 3, speakers=True)[4] == ["[same] a", "[other] b", "[same] c"]
    # the same ids in another split are another dialogue
    assert dialogue_context([_record(1, 0, "a"), _record(1, 1, "b", split="dev")], 2) == [[], []]
    # the later turns, in time order, marked alike; and rows left unmarked on purpose
    assert dialogue_context(recs, 2, later=True) == [["c", "d"], ["b", "c"], [], ["d"], []]
    assert dialogue_context(recs, 1, speakers=True, later=True) == [["[other] c"], ["[other] b"], [], ["[same] d"], []]
    assert dialogue_context(recs, 1, speakers=True, later=True, unmarked={"train/dia1_utt1"})[0] == ["c"]
    many = [_record(d, 0, "x") for d in range(1000)]
    share = unmarked_share(many, 0.3, seed=0)
    assert 250 < len(share) < 350 and share == unmarked_share(many, 0.3, seed=0) != unmarked_share(many, 0.3, seed=1)


def test_tokenize_puts_the_newest_context_next_to_the_transcript(tokenizer):
    enc = tokenize(["Really?"], tokenizer, 32, [["oldest line", "newest line"]])
    words = tokenizer.convert_ids_to_tokens(enc["input_ids"][0][enc["attention_mask"][0] == 1])
    assert words == ["[CLS]", "really", "?", "[SEP]", "newest", "line", "[SEP]", "oldest", "line", "[SEP]"]
    # too much context: the oldest words go, the transcript stays whole
    long = ["word " * 40, "short one"]
    enc = tokenize(["I can't believe it!"], tokenizer, 16, [long])
    words = tokenizer.convert_ids_to_tokens(enc["input_ids"][0][enc["attention_mask"][0] == 1])
    assert words[:9] == ["[CLS]", "i", "can", "'", "t", "believe", "it", "!", "[SEP]"]
    assert words[9:11] == ["short", "one"]
    assert len(words) == 16 and words[-1] == "[SEP]"
    # no transcript: text absent whatever the context; no context: the plain encoding
    assert not tokenize([None, "  "], tokenizer, 16, [["hi"], ["there"]])["attention_mask"].any()
    plain, empty = tokenize(["Hello."], tokenizer, 16), tokenize(["Hello."], tokenizer, 16, [[]])
    assert (plain["input_ids"] == empty["input_ids"]).all()


def _words(tokenizer, enc, row: int = 0, mask=None) -> list[str]:
    keep = (enc["attention_mask"] if mask is None else np.asarray(mask))[row] == 1
    return tokenizer.convert_ids_to_tokens(enc["input_ids"][row][keep])


def test_tokenize_puts_the_later_turns_behind_a_marker_and_shares_the_room(tokenizer):
    enc = tokenize(["Really?"], tokenizer, 32, [["Guess what.", "I got the job."]], [["Yes, Monday.", "Great!"]])
    assert _words(tokenizer, enc) == ["[CLS]", "really", "?", "[SEP]", "i", "got", "the", "job", ".", "[SEP]", "guess",
                                      "what", ".", "[SEP]", "[MASK]", "yes", ",", "monday", ".", "[SEP]", "great", "!",
                                      "[SEP]"]
    # little room: the nearest turn on each side first, the transcript whole
    enc = tokenize(["Really?"], tokenizer, 14, [["Guess what.", "I got the job."]], [["Yes, Monday.", "Great!"]])
    assert _words(tokenizer, enc) == ["[CLS]", "really", "?", "[SEP]", "i", "got", "the", "job", ".", "[SEP]",
                                      "[MASK]", "yes", ",", "[SEP]"]
    # later turns alone, and a row without any beside it: as today
    enc = tokenize(["Really?", "Fine."], tokenizer, 16, [None, ["Hi."]], [["Great!"], []])
    assert _words(tokenizer, enc, 0) == ["[CLS]", "really", "?", "[SEP]", "[MASK]", "great", "!", "[SEP]"]
    assert (enc["input_ids"][1] == tokenize(["Fine."], tokenizer, 16, [["Hi."]])["input_ids"][0]).all()
    assert not tokenize([None], tokenizer, 16, None, [["Great!"]])["attention_mask"].any()


def test_training_keeps_a_random_number_of_later_turns(tokenizer):
    """future_truncation: each row keeps 0, 1 or all of its later turns (about equally often);
    keeping none gives exactly the encoding without later turns."""
    enc = tokenize(["Really?", "Okay."], tokenizer, 40, [["I got the job."], None], [["Yes, Monday.", "Great!"], None])
    ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
    gen = torch.Generator().manual_seed(0)
    seen: dict[int, int] = {}
    for _ in range(300):
        kept = batches.future_truncation(ids, mask, tokenizer.mask_token_id, tokenizer.sep_token_id, gen)
        assert (kept[1] == mask[1]).all()  # no later turns: untouched
        seen[int(kept[0].sum())] = seen.get(int(kept[0].sum()), 0) + 1
        if int(kept[0].sum()) == 10:
            none = tokenize(["Really?"], tokenizer, 40, [["I got the job."]])
            assert _words(tokenizer, enc, 0, kept.numpy()) == _words(tokenizer, none)
    assert sorted(seen) == [10, 16, 19] and min(seen.values()) > 70, seen


def test_class_weights_modes():
    labels = np.array([0] * 8 + [1] * 2)
    assert np.allclose(train.class_weights(labels, 2, "none"), [1, 1])
    inv = train.class_weights(labels, 2, "inverse")
    assert inv[1] / inv[0] == pytest.approx(4.0) and inv.mean() == pytest.approx(1.0)
    assert train.class_weights(labels, 2, "sqrt")[1] / train.class_weights(labels, 2, "sqrt")[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="class weighting"):
        train.class_weights(labels, 2, "balanced")


def test_selection_score_and_its_check():
    m = {"dev_emotion_weighted_f1": 0.6, "dev_sentiment_weighted_f1": 0.7}
    assert [train_loop.selection_score(m, s) for s in train.SELECT_ON] == [0.6, 0.7, pytest.approx(0.65)]
    with pytest.raises(ValueError, match=r"select_on must be one of \['emotion', 'sentiment', 'mean'\], got 'f1'"):
        train.run(train.JobConfig(), train.TrainConfig(select_on="f1"), None)


def test_time_summary_splits_the_run():
    history = [{"epoch_time_s": 100.0, "data_s": 5.0, "forward_s": 30.0, "backward_s": 60.0, "dev_time_s": 5.0}] * 2
    line = train.time_summary({"total_s": 230.0, "before_fit_s": 10.0, "fit_s": 210.0, "report_s": 10.0}, history)
    assert line == ("time 230 s: set-up 10 s (Ray start, featurize) | training 210 s = 2 epochs 200 s "
                    "(waiting for data 10 s: Ray Data read + tokenize; forward 60 s; backward + step 120 s; dev 10 s) "
                    "+ Ray Train start-up, checkpoints and reports 10 s | best model + dev report 10 s")


def test_length_bucketed_keeps_every_row_and_trims_padding():
    lengths = [3, 10, 1, 7, 2, 9, 4, 8]
    mask = torch.tensor([[1] * n + [0] * (12 - n) for n in lengths])
    pool = {"input_ids": mask * 5, "attention_mask": mask, "emotion": torch.arange(8)}
    out = list(batches.length_bucketed([pool], 3, torch.Generator().manual_seed(0)))
    assert sorted(len(b["emotion"]) for b in out) == [2, 3, 3]
    assert sorted(torch.cat([b["emotion"] for b in out]).tolist()) == list(range(8))
    for b in out:  # similar lengths together, each cut to its own longest row
        assert b["attention_mask"].shape[1] == int(b["attention_mask"].sum(dim=1).max())
    assert sorted(b["attention_mask"].shape[1] for b in out) == [3, 8, 10]
    cached = {"text_emb": torch.zeros(4, 2), "emotion": torch.arange(4)}
    assert list(batches.length_bucketed([cached], 3)) == [cached]


def test_context_reaches_the_training_inputs(ray_local, tmp_path, tokenizer):
    """decode_and_featurize (the train-time path) encodes each record with its dialogue's
    earlier turns, its later turns and who said them; speaker_dropout leaves a share unmarked."""
    features = FeatureConfig(context_turns=2, future_turns=1, context_speakers=True)
    model = MultimodalSentimentModel(ModelConfig(features=features, modalities=("text",)))
    checkpoint.save(model, tmp_path / "m")
    recs = [_record(7, 0, "We were on a break!"), _record(7, 1, "Really?", "Rachel"), _record(7, 2, "Yes.")]

    def words(**kw) -> dict[str, list[str]]:
        ds = featurize.raw_dataset(recs, str(tmp_path / "m"), ("text",), str(tmp_path / "staging.parquet"), **kw)
        return {r["id"].split("_")[-1]: tokenizer.convert_ids_to_tokens(
            np.asarray(r["input_ids"])[np.asarray(r["attention_mask"]) == 1]) for r in ds.take_all()}

    rows = words()
    assert rows["utt1"] == ["[CLS]", "really", "?", "[SEP]", "[", "other", "]", "we", "were", "on", "a", "break", "!",
                            "[SEP]", "[MASK]", "[", "other", "]", "yes", ".", "[SEP]"]
    assert rows["utt0"][:7] == ["[CLS]", "we", "were", "on", "a", "break", "!"] and rows["utt0"][8] == "[MASK]"
    assert "[MASK]" not in rows["utt2"]  # the last turn: nothing after it
    unmarked = words(speaker_dropout=1.0)
    assert unmarked["utt1"] == ["[CLS]", "really", "?", "[SEP]", "we", "were", "on", "a", "break", "!", "[SEP]",
                                "[MASK]", "yes", ".", "[SEP]"]


def test_compact_checkpoint_round_trip_and_damage(tmp_path):
    """A fine-tuned text model stored compact: a fraction of the size, the same predictions
    (fp16 layers), the video trunk never stored; damage is named, never a silent fallback."""
    torch.manual_seed(0)
    config = ModelConfig(freeze_text=False, modalities=("text",), features=FeatureConfig(context_turns=1))
    model = MultimodalSentimentModel(config).eval()
    with torch.no_grad():  # a "fine-tune": every layer moves, the embeddings stay (frozen)
        for p in model.text_encoder.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    assert not model.text_encoder.embeddings.word_embeddings.weight.requires_grad
    full = checkpoint.save(model, tmp_path / "full")
    compact = checkpoint.save(model, tmp_path / "compact", compact=True)
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(compact) < 0.2 * size(full) and size(compact) < 25e6
    meta = json.loads((compact / "config.json").read_text())
    assert meta["model"]["modalities"] == ["text"]
    assert "text_encoder.embeddings.word_embeddings.weight" in meta["compact"]["base_tensors"]
    loaded = checkpoint.load(compact)
    tok = loaded.tokenizer
    enc = tokenize(["I'm so happy for you!", "Get out!"], tok, 32, [["Hi."], None])
    batch = {"input_ids": torch.from_numpy(enc["input_ids"]), "attention_mask": torch.from_numpy(enc["attention_mask"]),
             "audio": torch.zeros(2, 1, 64, 300), "mask": torch.tensor([[1.0, 1.0, 1.0]] * 2)}
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert torch.allclose(torch.softmax(a["emotion"], -1), torch.softmax(b["emotion"], -1), atol=2e-3)
    # audio and video are masked off by the checkpoint itself, whatever the batch says
    assert b["per_modality"]["video"]["emotion"].abs().sum() == pytest.approx(
        (loaded.modality_heads["video"]["emotion"].bias.abs().sum() * 2).item(), rel=1e-5)

    weights = compact / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors is damaged"):
        checkpoint.load(compact)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        checkpoint.load(compact)
    meta["compact"]["base_sha256"] = "0" * 64
    other = checkpoint.save(model, tmp_path / "other", compact=True)
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another text encoder"):
        checkpoint.load(other)


def test_text_recipe_runs_on_real_ray_train_and_its_loss_falls(ray_local, sample_root, tmp_path):
    """The starter recipe on the sample data: fine-tuned MiniLM (embeddings frozen), two
    earlier turns and one later as context, marked by speaker (some rows unmarked, the later
    turn dropped at random), no class weights, 2 gloo workers, compact output."""
    job = train.JobConfig(meld_dir=str(sample_root), output=str(tmp_path / "model"),
                          storage_path=str(tmp_path / "store"),
                          name="recipe", num_workers=2, cache_dir=str(tmp_path / "cache"), compact=True)
    cfg = train.TrainConfig(modalities=("text",), epochs=3, batch_size=8, finetune=("text",), backbone_lr=1e-4,
                            patience=0, seed=0, speaker_dropout=0.3)
    config = ModelConfig(freeze_text=False, modalities=("text",),
                         features=FeatureConfig(context_turns=2, future_turns=1, context_speakers=True,
                                                max_text_length=64))
    res = train.run(job, cfg, config)
    history = res["history"]
    assert history == json.loads((tmp_path / "model.train.json").read_text())["history"]
    losses = [h["train_loss"] for h in history]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.8, losses
    assert res["report"]["heads"]["emotion"]["accuracy"] > 0.5  # 7 classes: chance is 0.14
    assert all(h["forward_s"] > 0 and h["backward_s"] > 0 for h in history)
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["compact"] and meta["model"]["features"]["context_turns"] == 2
    assert meta["model"]["features"]["future_turns"] == 1 and meta["model"]["features"]["context_speakers"]
    assert meta["model"]["modalities"] == ["text"]
    assert (tmp_path / "model" / "model.safetensors").stat().st_size < 25e6
    assert len(read_meld(sample_root, "dev").records) == res["report"]["n"]
