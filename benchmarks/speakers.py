"""The speaker stage's cost beside speech recognition, and its diarization error, in one run.

    python benchmarks/speakers.py [--turns 40] [--voices 2 3] [--rounds 2] [--threads 1]

On espeak-ng dialogues of --voices voices (mediagen.VOICES, alternating turns of
mediagen.TALK_SENTENCES with 0.35 s between turns), per round:
  asr       SpeechRecognizer.transcribe(file): decode, VAD, Whisper tiny.en int8, utterances
  speakers  the same with a VoiceTrack: the asr work plus speaker embeddings of every
            stretch of speech, clustering and utterances split at speaker turns
and prints the speaker stage's own CPU seconds (speakers - asr) per second of audio, its
ratio to the asr CPU time (target: at most 0.5), and the diarization error rate of the
utterances against the turns made (0.25 s collar, overlap scored; benchmarks/der.py, tested
in tests/test_speakers.py), with the number of speakers found. CPU time (process time) is
the measure: steadier than wall time on a shared machine. torch and CTranslate2 run on
--threads threads (1: what a 1-CPU Ray actor gives them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=40, help="turns per dialogue (default 40: about 2 minutes)")
    p.add_argument("--voices", type=int, nargs="+", default=[2, 3], help="dialogues of these many voices")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()

    import mediagen
    import torch
    from der import diarization_error

    from mmsa_ray.speakers import SpeakerConfig, VoiceTrack
    from mmsa_ray.speech import SpeechConfig, SpeechRecognizer

    torch.set_num_threads(a.threads)
    recognizer = SpeechRecognizer(SpeechConfig(cpu_threads=a.threads))
    sentences = mediagen.TALK_SENTENCES
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.voices:
            turns = [(mediagen.VOICES[i % n], sentences[i % len(sentences)]) for i in range(a.turns)]
            audio, spans = mediagen.dialogue(turns, tmp)
            path = mediagen.write_audio(Path(tmp) / f"dialogue{n}.wav", rate=16000, channels=1, samples=audio[None])
            seconds = len(audio) / 16000
            cpu = {"asr": [], "speakers": []}
            for _ in range(a.rounds):
                for kind in ("asr", "speakers"):
                    voices = VoiceTrack(SpeakerConfig()) if kind == "speakers" else None
                    t0 = time.process_time()
                    utterances = recognizer.transcribe(str(path), voices=voices)
                    cpu[kind].append(time.process_time() - t0)
            asr, both = statistics.median(cpu["asr"]), statistics.median(cpu["speakers"])
            error = diarization_error([(s, e, v) for s, e, v, _ in spans],
                                      [(u.start, u.end, u.speaker) for u in utterances])
            print(f"{n} voices, {a.turns} turns, {seconds:.0f} s of audio ({a.threads} thread(s)):")
            print(f"  asr CPU {asr:.2f} s ({asr / seconds * 1000:.0f} ms per s of audio); speaker stage CPU "
                  f"{both - asr:.2f} s ({(both - asr) / seconds * 1000:.0f} ms per s); speakers / asr = "
                  f"{(both - asr) / asr:.2f} (target <= 0.5)")
            print(f"  speakers found {len({u.speaker for u in utterances})} of {n}; DER {100 * error.rate:.1f}% "
                  f"(missed {error.missed_s:.1f} s, false alarm {error.false_alarm_s:.1f} s, confusion "
                  f"{error.confusion_s:.1f} s of {error.reference_s:.1f} s scored)")


if __name__ == "__main__":
    main()
