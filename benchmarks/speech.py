"""The speech stage's speed: ours against faster-whisper called directly, in one run.

    python benchmarks/speech.py [--file FILE] [--rounds 2] [--minutes 12] [--asr-model default ...]

Per round, on the same file and the same loaded WhisperModel (tiny.en int8 by default):
  ours    mmsa_ray.speech.SpeechRecognizer.transcribe: PyAV audio in chunks of chunk_s cut
          in silence, Silero VAD, word timestamps, utterances
  direct  faster_whisper.WhisperModel.transcribe(FILE, vad_filter=True, word_timestamps=True)
          with the segments consumed (faster-whisper decodes the whole file into memory)
and prints each one's real-time factor (seconds of audio per wall second; CPU seconds too,
steadier on a shared machine), ours/direct cost (target <= 1.2) and the word error rate
between the two transcripts (the issue's acceptance: <= 10%), our coverage (seconds of
speech in utterances with words against stretches left "unrecognized"), and for the
generated talk each one's WER against what was said. `direct` runs faster-whisper's
defaults, temperature fallback included; ours decodes at temperature 0 only and transcribes
stretches without words again (mmsa_ray.speech), and those costs are in its time.

The two run interleaved, round after round, so load from other processes hits them alike;
min and median over --rounds are reported. Without --file, a talk of --minutes minutes is
generated with espeak-ng (sentences with pauses of 0.3-1.5 s, in an mp4 with a small
video track), longer than one chunk so that chunking is part of what is measured.

Sections (--section): `stage` (this comparison) and `pipeline`: `label --utterances` end to
end in utterances per second, the Ray Data pipeline (a speech actor, decode tasks and a
model actor on a local Ray of 2 CPUs) beside a plain loop in this process doing the same
work on the same --pipeline-files generated talks (ratio ray / loop).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TEXT = """My grandmother grew tomatoes behind the old stone barn. Every summer the river flooded the
lower fields. We walked to the market on Saturday mornings. The baker sold warm bread and small
apple pies. Our teacher read stories about sailors and whales. In winter the lake froze and
children skated for hours. My brother built a wooden boat with his friends. The library closed
early because of the storm. Nobody expected the train to arrive so late. She painted the kitchen
door a bright yellow. The museum opened a new exhibition about volcanoes. After dinner we played
cards until midnight. The mayor promised to repair the bridge before autumn. A small dog followed
us all the way home. The farmers worried about the dry weather. Our neighbours planted apple trees
along the road. The concert started an hour later than planned. He forgot his umbrella on the bus
again. The children collected shells on the beach. I think the new restaurant is too expensive.
The doctor told him to rest for a week. We could hear thunder far away in the hills. The old
clock in the hall stopped at noon. Please remember to close the windows before you leave."""


def make_talk(path: Path, minutes: float, seed: int = 0) -> str:
    """An espeak-ng talk of about `minutes` minutes in an mp4 with video -> what it says."""
    import av
    import mediagen

    rng = np.random.default_rng(seed)
    sentences = [s.strip() + "." for s in " ".join(TEXT.split()).split(".") if s.strip()]
    rate = 22050
    said = []
    with tempfile.TemporaryDirectory() as d:
        for i, s in enumerate(sentences):
            wav = Path(d) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-s", str(int(rng.integers(150, 190))), "-w", str(wav), s], check=True)
            with av.open(str(wav)) as c:
                said.append(np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]) / 32768)
    parts, n, text = [], 0, []
    while n < minutes * 60 * rate:
        k = int(rng.integers(len(said)))
        x = said[k].astype(np.float32) * 0.8
        pause = np.zeros(int(rng.uniform(0.3, 1.5) * rate), np.float32)
        parts += [x, pause]
        text.append(sentences[k])
        n += len(x) + len(pause)
    wave = np.concatenate(parts)
    seconds = len(wave) / rate
    wave44 = np.interp(np.arange(round(seconds * 44100)) / 44100, np.arange(len(wave)) / rate, wave).astype(np.float32)
    mediagen.write_video(path, seconds=seconds, width=64, height=48, fps=5, audio=(44100, 1, "aac"),
                         audio_samples=wave44[None])
    return " ".join(text)


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def stage(args) -> None:
    """Ours against WhisperModel.transcribe on the same file, interleaved rounds."""
    from mmsa_ray.media import probe_duration
    from mmsa_ray.speech import SpeechConfig, SpeechRecognizer

    with tempfile.TemporaryDirectory() as d:
        truth = None
        if args.file:
            path = Path(args.file)
        else:
            if shutil.which("espeak-ng") is None:
                sys.exit("espeak-ng is not installed: pass --file")
            path = Path(d) / "talk.mp4"
            truth = make_talk(path, args.minutes)
        seconds = probe_duration(str(path))
        config = SpeechConfig(model=args.asr_model, device=args.asr_device, compute_type=args.asr_compute_type,
                              cpu_threads=args.asr_threads)
        t0 = time.perf_counter()
        ours = SpeechRecognizer(config)
        print(f"file: {path.name}, {seconds:.1f} s of audio; model {config.model} on {config.resolved_device()} "
              f"({config.resolved_compute_type()}), loaded in {time.perf_counter() - t0:.1f} s")

        def direct():
            segments, _ = ours.model.transcribe(str(path), language=config.language, vad_filter=True,
                                                word_timestamps=True)
            return " ".join(s.text.strip() for s in segments)

        heard: list = []

        def ours_text():
            heard[:] = ours.transcribe(str(path))
            return " ".join(u.text for u in heard if u.speech == "found")

        times = {"ours": [], "direct": []}
        texts = {}
        for r in range(args.rounds):
            for name, fn in (("ours", ours_text), ("direct", direct)):
                texts[name], wall, cpu = _timed(fn)
                times[name].append((wall, cpu))
                print(f"  round {r + 1} {name:6s} wall {wall:6.1f} s (RTF {seconds / wall:5.1f}x)  "
                      f"cpu {cpu:6.1f} s (RTF {seconds / cpu:5.1f}x)")
        _stage_report(seconds, times, texts, heard, truth)


def _stage_report(seconds: float, times: dict[str, list[tuple[float, float]]], texts: dict[str, str], heard: list,
                  truth: str | None) -> None:
    """The stage's table: real-time factors (min and median of the rounds), our cost against
    faster-whisper's, the WER between the two (and against what was said, when known), and
    the coverage of our utterances."""
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    wer = jiwer.wer(texts["direct"], texts["ours"], reference_transform=norm, hypothesis_transform=norm)
    print(f"{'':8s}{'RTF wall min/median':>22s}{'RTF cpu min/median':>22s}")
    for name, ts in times.items():
        walls, cpus = [t[0] for t in ts], [t[1] for t in ts]
        print(f"{name:8s}{seconds / min(walls):10.1f}x /{seconds / statistics.median(walls):6.1f}x"
              f"{seconds / min(cpus):14.1f}x /{seconds / statistics.median(cpus):6.1f}x")
    wall_ratio = min(t[0] for t in times["ours"]) / min(t[0] for t in times["direct"])
    cpu_ratio = min(t[1] for t in times["ours"]) / min(t[1] for t in times["direct"])
    print(f"ours/direct cost: wall {wall_ratio:.2f}x, cpu {cpu_ratio:.2f}x (target <= 1.2)")
    print(f"WER of ours against direct: {wer:.3f} ({len(texts['direct'].split())} words; target <= 0.10)")
    found = sum(u.end - u.start for u in heard if u.speech == "found")
    lost = [u for u in heard if u.speech == "unrecognized"]
    lost_s = sum(u.end - u.start for u in lost)
    print(f"coverage of ours: {found:.1f} s in utterances with words, {len(lost)} stretches of speech "
          f"unrecognized ({lost_s:.1f} s): {100 * found / max(found + lost_s, 1e-9):.1f}%")
    if truth is not None:
        print("WER against what was said: " + ", ".join(
            f"{name} {jiwer.wer(truth, texts[name], reference_transform=norm, hypothesis_transform=norm):.3f}"
            for name in ("ours", "direct")))


def pipeline(args) -> None:
    """`label --utterances` end to end in utterances/s: the Ray Data pipeline (speech actor,
    decode tasks, model actor on a local Ray of 2 CPUs) against a plain loop in this process
    doing the same work (SpeechRecognizer.transcribe, then Predictor.preprocess with the
    transcript and context and predict_batch per utterance), on the same files."""
    import ray

    from mmsa_ray.batch import label
    from mmsa_ray.batch.utterances import SpeechStageConfig
    from mmsa_ray.media import probe_duration
    from mmsa_ray.speech import SpeechConfig

    tmp = Path(tempfile.mkdtemp(prefix="mmsa-bench-utterances-"))
    src = tmp / "talks"
    src.mkdir()
    for i in range(args.pipeline_files):
        make_talk(src / f"talk{i}.mp4", args.pipeline_minutes, seed=i)
    audio_s = sum(probe_duration(str(f)) for f in src.iterdir())
    checkpoint = _checkpoint(args, tmp)
    speech = SpeechConfig(model=args.asr_model, device=args.asr_device, compute_type=args.asr_compute_type,
                          cpu_threads=1)
    print(f"\npipeline: {args.pipeline_files} talks, {audio_s:.0f} s of audio; checkpoint {checkpoint}", flush=True)

    n, loop_s = _loop(src, speech, checkpoint)
    print(f"loop (1 CPU): {n} utterances in {loop_s:.1f} s: {n / loop_s:.2f} utterances/s, "
          f"RTF {audio_s / loop_s:.1f}x", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    try:
        def config(input_dir: Path, output: Path) -> label.LabelConfig:
            return label.LabelConfig(input=str(input_dir), checkpoint=str(checkpoint), output=str(output),
                                     utterances="on", speech=speech, cpus_per_actor=0.5, decode_cpus=0.5,
                                     asr=SpeechStageConfig(cpus_per_actor=0.5))  # + 1 CPU for read tasks: 2

        warm = tmp / "warmup"  # worker processes import Whisper/torch/PyAV once, as the loop's has
        warm.mkdir()
        (warm / "talk.mp4").symlink_to(sorted(src.iterdir())[0])
        label.label(config(warm, tmp / "warmup_labels"))
        summary = label.label(config(src, tmp / "labels"))
    finally:
        ray.shutdown()
    rate = summary.labeled / summary.seconds
    print(summary.stats)
    print(f"ray (2 CPUs): {summary.labeled} utterances in {summary.seconds:.1f} s: {rate:.2f} utterances/s, "
          f"RTF {audio_s / summary.seconds:.1f}x (listing, planning and actor start-up included)")
    print(f"ratio ray / loop: {rate / (n / loop_s):.2f} (utterances: ray {summary.labeled}, loop {n})")


def _loop(src: Path, speech, checkpoint: Path) -> tuple[int, float]:
    """(utterances, seconds) of the pipeline's work done by a plain loop in this process:
    one thread for Whisper and torch alike, each file transcribed, then its utterances
    preprocessed with their context and predicted 16 at a time."""
    import torch

    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor
    from mmsa_ray.speech import SpeechRecognizer

    torch.set_num_threads(1)
    recognizer, predictor = SpeechRecognizer(speech), Predictor.from_checkpoint(checkpoint, device="cpu")
    turns = predictor.feature_config.context_turns if predictor.uses_context else 0
    t0 = time.perf_counter()
    n = 0
    for path in sorted(src.iterdir()):
        utts = recognizer.transcribe(str(path))
        feats = [predictor.preprocess(str(path), u.text, u.start, u.end,
                                      context=[v.text for v in utts[max(0, i - turns):i]] if turns else None)
                 for i, u in enumerate(utts)]
        for i in range(0, len(feats), 16):
            predictor.predict_batch(collate(feats[i:i + 16]))
        n += len(utts)
    return n, time.perf_counter() - t0


def _checkpoint(args, tmp: Path) -> Path:
    """--checkpoint, else the shipped starter, else a random-initialised text-only model in its
    place (the same work: the starter uses text alone, so no media is decoded for the model)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    try:
        from mmsa_ray.pretrained import default_checkpoint

        return default_checkpoint()
    except FileNotFoundError:
        import torch

        from mmsa_ray import checkpoint
        from mmsa_ray.model import ModelConfig, MultimodalSentimentModel

        torch.manual_seed(0)
        checkpoint.save(MultimodalSentimentModel(ModelConfig(modalities=("text",))), str(tmp / "checkpoint"))
        return tmp / "checkpoint"


def main(argv: list[str] | None = None) -> None:
    from mmsa_ray.speech import SpeechConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", help="a media file to transcribe (default: a generated espeak-ng talk)")
    p.add_argument("--minutes", type=float, default=12.0, help="length of the generated talk (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--asr-model", default=SpeechConfig.model, help="as `mmsa-ray transcribe --asr-model`")
    p.add_argument("--asr-device", default=SpeechConfig.device)
    p.add_argument("--asr-compute-type", default=None)
    p.add_argument("--asr-threads", type=int, default=0, help="CTranslate2 CPU threads (0: its default)")
    p.add_argument("--section", choices=("stage", "pipeline", "all"), default="all",
                   help="stage: ours against faster-whisper; "
                        "pipeline: label --utterances in utterances/s (default: all)")
    p.add_argument("--pipeline-files", type=int, default=3,
                   help="talks labeled by the pipeline section (default: %(default)s)")
    p.add_argument("--pipeline-minutes", type=float, default=1.0, help="length of each of those (default: %(default)s)")
    p.add_argument("--checkpoint", help="pipeline section's model (default: the starter checkpoint, else a "
                   "random-initialised text-only model)")
    args = p.parse_args(argv)
    if args.section in ("stage", "all"):
        stage(args)
    if args.section in ("pipeline", "all"):
        pipeline(args)


if __name__ == "__main__":
    main()
