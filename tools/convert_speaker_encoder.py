"""Make mmsa_ray/pretrained/speaker-encoder/ from the Resemblyzer wheel, and check it.

    pip install -e '.[tools]' && pip install --no-deps resemblyzer==0.1.4
    python tools/convert_speaker_encoder.py

(Resemblyzer asks for `webrtcvad`, which the registries have only as source; `.[tools]`
installs the `webrtcvad-wheels` build of it and librosa, hence --no-deps.)

Reads the wheel's `pretrained.pt` with torch.load(weights_only=True) (tensors only, no
code), keeps the LSTM and linear layer (the GE2E training's similarity scale and bias and
optimizer state are not part of the encoder), writes them as safetensors with the licence,
then embeds espeak-ng speech of several voices with both mmsa_ray.speaker_encoder and the
package's VoiceEncoder.embed_utterance and writes how close they are to check.json. Fails
when any pair's cosine similarity is below 0.999.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mmsa_ray import speaker_encoder  # noqa: E402

CHECK_VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m7", "de")
CHECK_TEXT = ("The weather turned cold this morning and the trains ran late again.",
              "Please tell me where you left the keys before we go.")


def espeak(text: str, voice: str) -> np.ndarray:
    """espeak-ng speech as float32 [N] at 16 kHz."""
    import librosa

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
        audio, _ = librosa.load(str(wav), sr=speaker_encoder.SAMPLE_RATE)
    return audio.astype(np.float32)


def main() -> None:
    import resemblyzer

    package = Path(resemblyzer.__file__).resolve().parent
    version = __import__("importlib.metadata").metadata.version("resemblyzer")
    state = torch.load(package / "pretrained.pt", map_location="cpu", weights_only=True)["model_state"]
    weights = {k: v.contiguous() for k, v in state.items() if k.startswith(("lstm.", "linear."))}
    out = speaker_encoder.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"source": f"resemblyzer=={version}"})
    licence = next(package.parent.glob("[Rr]esemblyzer-*.dist-info/LICENSE*"))
    shutil.copyfile(licence, out / "LICENSE")

    speaker_encoder.load_encoder.cache_clear()
    ours = speaker_encoder.load_encoder(out)
    theirs = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    cosines, diffs = [], []
    for voice in CHECK_VOICES:
        for text in CHECK_TEXT:
            audio = espeak(text, voice)
            mine = speaker_encoder.embed_stretches(audio, [(0, len(audio))], ours)[0]
            reference = theirs.embed_utterance(audio)
            cosines.append(float(mine @ reference))
            diffs.append(float(np.abs(mine - reference).max()))
    check = {"source": f"resemblyzer=={version} (Apache-2.0, Resemble AI): resemblyzer/pretrained.pt",
             "parameters": sum(v.numel() for v in weights.values()),
             "compared_on": f"{len(cosines)} espeak-ng clips, voices {', '.join(CHECK_VOICES)}",
             "min_cosine": min(cosines), "max_abs_difference": max(diffs),
             "made_by": "python tools/convert_speaker_encoder.py"}
    (out / "check.json").write_text(json.dumps(check, indent=2) + "\n")
    print(json.dumps(check, indent=2))
    if min(cosines) < 0.999:
        sys.exit(f"the port disagrees with resemblyzer: min cosine {min(cosines):.5f} < 0.999")


if __name__ == "__main__":
    main()
