"""The Serve application end to end on loopback: a random-initialised checkpoint behind
a real HTTP endpoint (Ingress -> Preprocessor -> Model), compared with in-process
prediction of the same files, plus hostile uploads and the config surface."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
from pathlib import Path

import mediagen
import numpy as np
import pytest
import requests
import yaml

from mmsa_ray.labels import EMOTIONS
from mmsa_ray.serve import ServeConfig, add_serve_args, app, build_app, http_options, serve_config_from_args

REPO = Path(__file__).resolve().parents[1]
APP = "mmsa-test"
MAX_UPLOAD_MB = 1.0
PROB_FIELDS = ("emotion_probs", "sentiment_probs")


# ----------------------------------------------------------------------------- config (no Ray)


def test_config_from_strings_and_unknown_keys():
    config = ServeConfig.from_dict({"checkpoint": "ck", "max_batch_size": "4", "num_gpus": "none",
                                    "max_upload_mb": "1.5"})
    assert (config.max_batch_size, config.num_gpus, config.max_upload_bytes) == (4, None, int(1.5 * 1024 * 1024))
    assert config.resolved_max_ongoing_requests() == 8
    with pytest.raises(ValueError, match="unknown serve option"):
        ServeConfig.from_dict({"checkpoint": "ck", "max_batch": 4})
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeConfig.from_dict({"checkpoint": "ck", "max_batch_size": "4.5"})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ServeConfig(checkpoint="ck", max_batch_size=8, max_ongoing_requests=4)
    from mmsa_ray.pretrained import default_checkpoint

    # the starter checkpoint
    assert ServeConfig().checkpoint == ServeConfig(checkpoint=" ").checkpoint == str(default_checkpoint())
    with pytest.raises(ValueError, match=r"max_batch_size=0 must be > 0"):
        ServeConfig(checkpoint="ck", max_batch_size=0)
    assert ServeConfig(checkpoint="ck", fuse="text=1,face=0.5").fuse_weights() == {"text": 1.0, "face": 0.5}
    assert ServeConfig(checkpoint="ck").fuse_weights() is None
    with pytest.raises(ValueError, match="invalid ServeConfig: faces='maybe' must be on or off; fuse weight of face"):
        ServeConfig(checkpoint="ck", faces="maybe", fuse="face=x")
    with pytest.raises(ValueError, match="proxy_location='Nowhere' must be one of EveryNode, HeadOnly"):
        ServeConfig(checkpoint="ck", proxy_location="Nowhere")


def test_cli_flags_map_onto_config():
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(["--checkpoint", "ck", "--max-batch-size", "1", "--num-gpus", "0", "--port", "9001"])
    config = serve_config_from_args(args)
    assert (config.checkpoint, config.max_batch_size, config.num_gpus, config.port) == ("ck", 1, 0.0, 9001)
    assert config.request_timeout_s == ServeConfig(checkpoint="x").request_timeout_s


def test_resource_plan_fits_the_machine_it_starts_on():
    """Auto CPUs share the cluster's: every deployment fits 2 CPUs and 1 CPU; a big machine
    scales replicas out; explicit settings are kept and checked."""
    from mmsa_ray.serve.plan import plan_resources

    config = ServeConfig(checkpoint="ck", num_gpus=0)
    for cpus in (2.0, 1.0):
        plan = plan_resources(config, {"CPU": cpus})
        assert [d.name for d in plan.deployments()] == ["Ingress", "Speech", "Preprocessor", "Model"]
        assert plan.minimum()["CPU"] <= cpus and plan.model.num_cpus == plan.speech.num_cpus > 0
        assert [(d.min_replicas, d.max_replicas) for d in plan.deployments()] == [(1, 1)] * 4
        assert plan.speech.threads == plan.model.threads == 1
        plan.check_fits({"CPU": cpus})
    assert plan_resources(config, {"CPU": 2.0}).model.num_cpus == 0.66
    assert plan_resources(config, {"CPU": 2.0}).max_inflight_requests == 8  # 4 uploads per CPU
    assert plan_resources(ServeConfig(checkpoint="ck", num_gpus=0, max_inflight_requests=3),
                          {"CPU": 2.0}).max_inflight_requests == 3
    big = plan_resources(config, {"CPU": 32.0})
    assert (big.model.num_cpus, big.model.max_replicas, big.preprocessor.max_replicas, big.speech.max_replicas) \
        == (1.0, 4, 8, 8)
    gpu = plan_resources(ServeConfig(checkpoint="ck", num_gpus=1), {"CPU": 16.0, "GPU": 2.0})
    assert (gpu.model.num_gpus, gpu.model.max_replicas, gpu.model.num_cpus) == (1.0, 2, 1.0)
    # the seed's fixed 1 CPU each does not fit 2 CPUs: said before anything waits on it
    fixed = plan_resources(ServeConfig(checkpoint="ck", num_gpus=0, model_num_cpus=1, preprocess_num_cpus=1,
                                       speech_num_cpus=1), {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"needs 3 CPU .*Speech 1 x \(1 CPU, 0 GPU\).* has 2 CPU"):
        fixed.check_fits({"CPU": 2.0})
    # an autoscaling cluster scaled to zero: one CPU and one replica each
    empty = plan_resources(config, {})
    assert (empty.model.num_cpus, empty.speech.max_replicas) == (1.0, 1)
    assert "Speech       replicas 1     0.66 CPU  0 GPU  1 thread each" in plan_resources(config, {"CPU": 2}).lines()


def test_serve_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "jobs" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (application,) = schema.applications
    assert application.import_path == "mmsa_ray.serve:app"
    assert schema.http_options.request_timeout_s is not None
    config = ServeConfig.from_dict(application.args)
    assert config.num_gpus == 1 and config.max_batch_size > 1
    # The builder yields the application without touching Ray.
    built = app(dict(application.args))
    assert type(built).__name__ == "Application"


# ----------------------------------------------------------------------------- live server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from mmsa_ray import checkpoint
    from mmsa_ray.features import FeatureConfig
    from mmsa_ray.model import ModelConfig, MultimodalSentimentModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve") / "checkpoint"
    # reads two earlier and one later utterance with each transcript
    config = ModelConfig(features=FeatureConfig(context_turns=2, future_turns=1))
    checkpoint.save(MultimodalSentimentModel(config), str(path))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve-media")
    return mediagen.clips(d)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from mmsa_ray.predict import Predictor

    return Predictor.from_checkpoint(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def server(ray_local, checkpoint):
    """One Serve app for the module: small queues so that an overload burst is cheap."""
    from ray import serve

    config = ServeConfig(
        checkpoint=str(checkpoint),
        port=_free_port(),
        num_gpus=0,
        model_num_cpus=0.5,
        preprocess_num_cpus=0.5,
        model_threads=2,
        max_upload_mb=MAX_UPLOAD_MB,
        max_batch_size=4,
        batch_wait_timeout_s=0.2,
        max_ongoing_requests=4,
        max_queued_requests=4,
        preprocess_threads=2,
        request_timeout_s=120,
        speech_num_cpus=0.5,
    )
    serve.start(http_options=http_options(config))
    serve.run(build_app(config), name=APP, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        serve.shutdown()


def _post(base: str, path: Path | None = None, *, data: bytes | None = None, name: str = "clip.mp4",
          content_type: str = "video/mp4", transcript: str | None = None, **fields: str) -> requests.Response:
    payload = data if data is not None else path.read_bytes()
    form = {"transcript": transcript} if transcript is not None else {}
    form.update(fields)
    return requests.post(f"{base}/v1/predict", files={"file": (name, payload, content_type)}, data=form, timeout=120)


def _in_process(predictor, path: Path, transcripts: list[str | None]) -> list[dict]:
    from mmsa_ray.features import collate

    feats = [predictor.preprocess(str(path), transcript=t) for t in transcripts]
    return predictor.predict_batch(collate(feats))


def _assert_same_prediction(got: dict, want: dict) -> None:
    for key in PROB_FIELDS:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key], dtype=np.float64), atol=1e-5, rtol=0)
    for key in ("emotion", "sentiment", "model_id"):
        assert got[key] == want[key], key
    assert list(got["modalities"]) == list(want["modalities"])


def test_post_matches_in_process_prediction(server, clips, predictor):
    transcript = "Oh my god, that is the best news I have heard all year!"
    r = _post(server, clips["av"], transcript=transcript)
    assert r.status_code == 200, r.text
    got = r.json()
    (want,) = _in_process(predictor, clips["av"], [transcript])
    _assert_same_prediction(got, want)
    assert set(want) <= set(got)  # every field of a labeling row is in the response
    assert len(got["emotion_probs"]) == 7 and len(got["sentiment_probs"]) == 3
    assert abs(sum(got["emotion_probs"]) - 1) < 1e-5
    assert got["source"] == "clip.mp4"


def test_concurrent_requests_are_batched_and_stay_in_order(server, clips, predictor):
    """Three different transcripts at once: each answer must be its own clip's."""
    transcripts = ["I hate this.", "What a lovely day.", ""]
    with cf.ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda t: _post(server, clips["av"], transcript=t), transcripts))
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    wants = _in_process(predictor, clips["av"], transcripts)
    for r, want in zip(responses, wants, strict=True):
        _assert_same_prediction(r.json(), want)
    assert "text" not in responses[2].json()["modalities"]


def test_model_deployment_batches_handle_calls(server, clips, predictor):
    """Four calls issued together reach the model as one batch of four."""
    from ray import serve

    handle = serve.get_deployment_handle("Model", app_name=APP)
    before = handle.info.remote().result()
    feats = [predictor.preprocess(str(clips["av"]), transcript=t) for t in ("a", "b", "c", "d")]
    rows = [r.result() for r in [handle.predict.remote(f) for f in feats]]
    after = handle.info.remote().result()
    assert after["clips"] - before["clips"] == 4
    assert after["batches"] - before["batches"] == 1 and after["largest_batch"] == 4
    from mmsa_ray.features import collate

    for row, want in zip(rows, predictor.predict_batch(collate(feats)), strict=True):
        _assert_same_prediction(row, want)


def test_hostile_uploads_get_4xx_with_reason_and_server_stays_healthy(server, clips):
    good = clips["av"].read_bytes()
    cases = {
        "empty": _post(server, data=b""),
        "text as mp4": _post(server, data=b"this is not a video\n" * 200),
        "truncated": _post(server, data=good[: len(good) // 3]),
        "too large": _post(server, data=np.random.default_rng(0).bytes(int(MAX_UPLOAD_MB * 1024 * 1024) + 4096)),
        "text/plain part": _post(server, data=b"hello", name="notes.txt", content_type="text/plain"),
        "png part": _post(server, data=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, name="x.png", content_type="image/png"),
        "json body": requests.post(f"{server}/v1/predict", json={"file": "/etc/passwd"}, timeout=30),
        "no file field": requests.post(f"{server}/v1/predict", files={"transcript": (None, "hi")}, timeout=30),
        "bad window": requests.post(f"{server}/v1/predict", files={"file": ("c.mp4", good, "video/mp4")},
                                    data={"start": "2", "end": "1"}, timeout=30),
        "broken multipart": requests.post(
            f"{server}/v1/predict", data=b"--zz\r\nnonsense",
            headers={"content-type": "multipart/form-data; boundary=zz"}, timeout=30),
    }
    expected = {"empty": 400, "too large": 413, "text/plain part": 415, "png part": 415, "json body": 415,
                "no file field": 422, "bad window": 422, "broken multipart": 400}
    for name, r in cases.items():
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json()["error"], name
        if name in expected:
            assert r.status_code == expected[name], (name, r.status_code, r.text)
    assert cases["text as mp4"].status_code == 422 and cases["truncated"].status_code == 422
    assert cases["text as mp4"].json()["error"].startswith(
        "cannot use uploaded file 'clip.mp4': not a readable media file")

    health = requests.get(f"{server}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    replicas = health.json()["replicas"]  # deployment -> replicas by state: every one running
    assert len(replicas) >= 3 and all(set(states) == {"RUNNING"} for states in replicas.values()), replicas
    assert _post(server, clips["av"], transcript="still fine?").status_code == 200


def test_animated_gif_upload_is_labeled_like_label_does(server, tmp_path):
    """`label` takes .gif (an animated GIF is a video stream to FFmpeg), so an upload declared
    image/gif is decoded too; still-image types stay refused (the png case above)."""
    gif = mediagen.write_video(tmp_path / "anim.gif", 2.0, 96, 72, 10, codec="gif")
    r = _post(server, gif, name="anim.gif", content_type="image/gif")
    assert r.status_code == 200, r.text
    assert r.json()["modalities"] == ["video"] and r.json()["emotion"] in EMOTIONS


def test_oversized_chunked_upload_is_cut_off_while_streaming(server):
    """No Content-Length: the 413 comes from counting bytes as they arrive."""
    boundary = "mmsaboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode()
    chunk = b"\0" * 65536
    n_chunks = int(4 * MAX_UPLOAD_MB * 1024 * 1024) // len(chunk)

    def body():
        yield head
        for _ in range(n_chunks):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = requests.post(f"{server}/v1/predict", data=body(),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=60)
    except requests.ConnectionError:
        pytest.fail("server dropped the connection instead of answering 413")
    assert r.status_code == 413 and "max_upload_mb" in r.json()["error"]


def test_overload_answers_503_not_a_growing_queue(server, clips):
    """A burst far beyond max_ongoing + max_queued: the excess gets 503 at once."""
    data = clips["av"].read_bytes()
    with cf.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: _post(server, data=data, transcript="x"), range(24)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
    rejected = next(r for r in responses if r.status_code == 503)
    assert "busy" in rejected.json()["error"] and rejected.headers.get("Retry-After") == "1"
    assert requests.get(f"{server}/healthz", timeout=30).status_code == 200


def test_openapi_documents_the_routes(server):
    spec = requests.get(f"{server}/openapi.json", timeout=30).json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and {"file", "transcript"} <= set(body["properties"])
    assert "/healthz" in spec["paths"]
    docs = requests.get(f"{server}/docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    missing = requests.get(f"{server}/nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]


def test_post_equals_the_batch_labelers_row(server, checkpoint, clips, tmp_path):
    """The serve acceptance: one file + transcript, POSTed and labeled by `label`'s Ray
    Data pipeline, gives the same probabilities (1e-5) and labels."""
    import pyarrow.dataset as pads

    from mmsa_ray.batch.label import LabelConfig, label

    transcript = "Wait, you did what? That is amazing!"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,id,transcript\n{clips['av']},the-clip,\"{transcript}\"\n", encoding="utf-8")
    summary = label(LabelConfig(input=str(manifest), checkpoint=str(checkpoint), output=str(tmp_path / "labels")))
    assert (summary.labeled, summary.failed) == (1, 0)
    (row,) = pads.dataset(str(tmp_path / "labels"), format="parquet").to_table().to_pylist()
    assert row["error"] is None and row["transcript"] == transcript

    r = _post(server, clips["av"], transcript=transcript)
    assert r.status_code == 200, r.text
    got = r.json()
    _assert_same_prediction(got, row)
    for key in ("text_emotion", "audio_emotion", "video_emotion"):
        assert got[key] == row[key], key


# ----------------------------------------------------------------------------- speech


SPOKEN = ["The quick brown fox jumps over the lazy dog.", "Please bring the red umbrella when it rains."]


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory) -> Path:
    """An mp4 (video + AAC) of two espeak-ng sentences with a 1.5 s pause between them."""
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    d = tmp_path_factory.mktemp("serve-speech")
    rate = mediagen.ESPEAK_RATE
    pause = np.zeros(int(1.5 * rate), np.float32)
    wave = np.concatenate([pause[: rate // 2], mediagen.espeak(SPOKEN[0], d), pause, mediagen.espeak(SPOKEN[1], d),
                           pause[: rate // 2]]) * 0.8
    wave44 = np.interp(np.arange(round(len(wave) * 44100 / rate)) / 44100, np.arange(len(wave)) / rate, wave)
    return mediagen.write_video(d / "talk.mp4", seconds=len(wave) / rate, width=96, height=64, fps=10,
                                audio=(44100, 1, "aac"), audio_samples=wave44.astype(np.float32)[None])


def _words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


def test_upload_without_transcript_returns_utterances(server, speech_clip, predictor):
    """No transcript: the upload is transcribed; each utterance is predicted on its own
    window with its transcript, the earlier ones as context and the later ones as its
    future (then the caller's), exactly as in process."""
    from mmsa_ray.features import collate

    context = ["Where are you going?"]
    r = _post(server, speech_clip, context="Where are you going?", future="Home.")
    assert r.status_code == 200, r.text
    got = r.json()
    (whole,) = _in_process(predictor, speech_clip, [None])
    _assert_same_prediction(got, whole)  # the whole clip: today's result, unchanged
    utts = got["utterances"]
    assert len(utts) == 2, [u["transcript"] for u in utts]
    for u, sentence in zip(utts, SPOKEN, strict=True):
        # tiny.en on espeak: a word or two may come back changed ("jump" for "jumps")
        assert len(_words(u["transcript"]) & _words(sentence)) >= len(_words(sentence)) - 2, u["transcript"]
        assert 0 <= u["start"] < u["end"] and [w["word"] for w in u["words"]]
        assert 0 < u["asr_confidence"] <= 1 and "text" in u["modalities"]
    assert utts[0]["end"] + 1.0 < utts[1]["start"]
    # the same utterances as `transcribe` and `label` give (the recognizer in this process)
    from mmsa_ray.speakers import VoiceTrack
    from mmsa_ray.speech import SpeechRecognizer
    from mmsa_ray.utterances import utterance_rows

    keys = ("start", "end", "transcript", "words", "speech", "transcript_reliable", "asr_confidence", "speaker",
            "speaker_confidence")
    here = utterance_rows("talk.mp4", SpeechRecognizer().transcribe(str(speech_clip), voices=VoiceTrack()))
    assert [u["speaker"] for u in utts] == ["S1", "S1"]  # one voice
    assert [{k: u[k] for k in keys} for u in utts] == [{k: u[k] for k in keys} for u in here]
    feats = [predictor.preprocess(str(speech_clip), transcript=u["transcript"], start=u["start"], end=u["end"],
                                  context=context + [x["transcript"] for x in utts[:i]],
                                  future=[x["transcript"] for x in utts[i + 1:]] + ["Home."])
             for i, u in enumerate(utts)]
    for u, want in zip(utts, predictor.predict_batch(collate(feats)), strict=True):
        _assert_same_prediction(u, want)


def test_transcribe_false_or_a_transcript_keeps_the_whole_clip_answer(server, speech_clip, predictor):
    plain = _post(server, speech_clip, transcribe="false")
    assert plain.status_code == 200, plain.text
    assert "utterances" not in plain.json()
    (want,) = _in_process(predictor, speech_clip, [None])
    _assert_same_prediction(plain.json(), want)
    given = _post(server, speech_clip, transcript="Hello there.")
    assert given.status_code == 200 and "utterances" not in given.json()
    # a video without sound: the whole clip as before, no utterances, and why
    silent = _post(server, mediagen.write_video(speech_clip.parent / "mute.mp4", seconds=1, width=64, height=48))
    assert silent.status_code == 200, silent.text
    assert silent.json()["utterances"] == [] and "no audio stream" in silent.json()["speech_error"]
    bad = _post(server, speech_clip, transcribe="maybe")
    assert bad.status_code == 422 and "transcribe" in bad.json()["error"]
    bad = _post(server, speech_clip, context='["ok", 3]')
    assert bad.status_code == 422 and "context" in bad.json()["error"]
    bad = _post(server, speech_clip, future="[not json")
    assert bad.status_code == 422 and "'future' starts like JSON but is not" in bad.json()["error"]


def test_the_following_utterances_change_an_ambiguous_line(server, speech_clip, predictor):
    """`future` (later utterances) reaches the model as in process: "Really?" followed by good
    news or by bad news is read differently, and without any the answer is the plain one."""
    from mmsa_ray.features import collate

    got = {}
    for name, future in (("good", ["I got the job!"]), ("bad", ["They fired me."]), ("none", None)):
        fields = {"transcript": "Really?", "transcribe": "false", "context": "Guess what."}
        r = _post(server, speech_clip, **fields, **({"future": json.dumps(future)} if future else {}))
        assert r.status_code == 200, r.text
        got[name] = r.json()
        want = predictor.predict_batch(collate([predictor.preprocess(str(speech_clip), "Really?",
                                                                     context=["Guess what."], future=future)]))[0]
        _assert_same_prediction(got[name], want)
    assert np.abs(np.subtract(got["good"]["emotion_probs"], got["bad"]["emotion_probs"])).max() > 1e-4
    assert np.abs(np.subtract(got["good"]["emotion_probs"], got["none"]["emotion_probs"])).max() > 1e-4


def test_two_voices_get_two_speakers(server, tmp_path):
    """A two-voice dialogue: utterances alternate S1, S2, as the turns were made; num_speakers
    is checked."""
    turns = [(mediagen.VOICES[i % 2], mediagen.TALK_SENTENCES[i]) for i in range(4)]
    audio, spans = mediagen.dialogue(turns, tmp_path)
    clip = mediagen.write_audio(tmp_path / "two.wav", rate=16000, channels=1, samples=audio[None])
    for extra in ({}, {"num_speakers": "2"}):
        r = _post(server, clip, name="two.wav", content_type="audio/wav", **extra)
        assert r.status_code == 200, r.text
        utts = r.json()["utterances"]
        assert [u["speaker"] for u in utts] == ["S1", "S2", "S1", "S2"], [(u["start"], u["speaker"]) for u in utts]
        for u, (a, b, _, _) in zip(utts, spans, strict=True):
            assert abs(u["start"] - a) < 0.5 and abs(u["end"] - b) < 0.5 and u["speaker_confidence"] > 0.5
    for bad in ("0", "two", "99"):
        r = _post(server, clip, name="two.wav", content_type="audio/wav", num_speakers=bad)
        assert r.status_code == 422 and "num_speakers" in r.json()["error"], r.text


def test_faces_of_an_upload_equal_the_labelers_and_reach_each_utterance(server, checkpoint, tmp_path):
    """Serve reads faces as `label` does: the same tracks, boxes and expressions for the same
    clip, on the whole upload and on each transcribed utterance."""
    import pyarrow.dataset as pads

    from mmsa_ray.batch.label import LabelConfig, label

    speech, spans = mediagen.spoken(SPOKEN)
    path = tmp_path / "faces.mp4"
    mediagen.write_faces_video(path, heads=2, seconds=len(speech) / 16000, audio=speech)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,id,transcript\n{path},faces,\"{SPOKEN[0]}\"\n", encoding="utf-8")
    summary = label(LabelConfig(input=str(manifest), checkpoint=str(checkpoint), output=str(tmp_path / "labels")))
    assert (summary.labeled, summary.failed) == (1, 0)
    (row,) = pads.dataset(str(tmp_path / "labels"), format="parquet").to_table().to_pylist()

    r = _post(server, path, transcript=SPOKEN[0])
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["face_count"] == row["face_count"] == 2 and got["face_emotion"] == row["face_emotion"] == "joy"
    assert got["face_error"] is row["face_error"] is None
    for served, labeled in zip(got["faces"], row["faces"], strict=True):
        assert {k: served[k] for k in ("track", "seconds", "start", "end", "emotion")} == {
            k: labeled[k] for k in ("track", "seconds", "start", "end", "emotion")}
        for k in ("box", "emotion_probs", "score"):
            np.testing.assert_allclose(served[k], labeled[k], atol=1e-4)

    r = _post(server, path)  # no transcript: utterances, each with the faces of its own window
    assert r.status_code == 200, r.text
    utterances = r.json()["utterances"]
    assert len(utterances) == len(spans)
    for u in utterances:
        assert u["face_count"] == 2 and u["face_emotion"] == "joy"
        assert all(u["start"] <= f["start"] <= f["end"] <= u["end"] for f in u["faces"])
