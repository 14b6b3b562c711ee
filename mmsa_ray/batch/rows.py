"""The model stage of `mmsa-ray label` and the rows it writes: LABEL_SCHEMA, and the
LabelPredictor actor that turns a batch of decoded features into those rows (error rows pass
through, rows without a signal get their no_label_reason).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from mmsa_ray.batch.decode import SPEECH_COLUMNS
from mmsa_ray.batch.faces import FACE_FIELDS
from mmsa_ray.batch.staging import str_or_none
from mmsa_ray.batch.utterances import WORD_TYPE
from mmsa_ray.faces import FACE_COLUMNS
from mmsa_ray.features import FEATURE_KEYS
from mmsa_ray.fusion import FUSED_INPUTS, fuse
from mmsa_ray.sources import float_or_none
from mmsa_ray.utterances import no_speech_reason

# One row per input item. Probabilities follow labels.EMOTIONS (7) and labels.SENTIMENTS (3);
# every prediction column is null on error rows.
LABEL_SCHEMA = pa.schema([
    ("id", pa.string()),  # unique per item: path relative to INPUT, the manifest's id, or uri#t=start,end
    ("uri", pa.string()),  # local path or cloud URI of the media
    ("start", pa.float64()),  # window start, seconds (null: from the beginning)
    ("end", pa.float64()),  # window end, seconds (null: to the end; longer than max_duration_s is an error)
    ("transcript", pa.string()),  # from the manifest or speech recognition (--utterances); null when none
    ("asr_confidence", pa.float64()),  # --utterances: exp(mean token log-probability) of the transcript, 0..1
    ("words", pa.list_(WORD_TYPE)),  # --utterances: {start, end, word, probability}, seconds in the file's time
    # --utterances: false when its ASR confidence is below transcript_checks.MIN_CONFIDENCE (the model did not
    # read it); null without speech recognition
    ("transcript_reliable", pa.bool_()),
    # --utterances: "found", "unrecognized" (VAD speech without words: no transcript) or "none" (no speech in the
    # file); null otherwise
    ("speech", pa.string()),
    # --utterances with speakers on: file-local S1, S2, ... (OUT/_speakers.parquet maps it to the archive's
    # speaker_id) and how clearly the voice is that speaker's, 0..1; null otherwise
    ("speaker", pa.string()),
    ("speaker_confidence", pa.float64()),
    ("emotion", pa.string()),
    ("emotion_probs", pa.list_(pa.float32())),  # 7, labels.EMOTIONS order
    ("sentiment", pa.string()),
    ("sentiment_probs", pa.list_(pa.float32())),  # 3, labels.SENTIMENTS order
    # calibrated top probability below the checkpoint's threshold (null: uncalibrated checkpoint, or no label)
    ("emotion_uncertain", pa.bool_()),
    ("sentiment_uncertain", pa.bool_()),
    ("modalities", pa.list_(pa.string())),  # present ones, labels.MODALITIES order
    ("text_emotion", pa.string()),  # each modality's own top emotion; null when absent
    ("audio_emotion", pa.string()),
    ("video_emotion", pa.string()),
    ("emotion_driver", pa.string()),  # the present modality whose own head backs the emotion most; null: no label
    *FACE_FIELDS,  # who is on screen and what their faces show (mmsa_ray.batch.faces); null with --faces off
    # --fuse: the checkpoint's emotion and the main face's, log-linear pooled (mmsa_ray.fusion); null otherwise
    ("fused_emotion", pa.string()),
    ("fused_emotion_probs", pa.list_(pa.float32())),
    ("error", pa.string()),  # null when labeled; otherwise "<uri>: <cause>"
    # why emotion and sentiment are null on a row without error: none of the checkpoint's
    # modalities had a signal ("no speech", "speech not recognized", "transcript unreliable", "no transcript",
    # "no transcript, audio or video")
    ("no_label_reason", pa.string()),
    ("model_id", pa.string()),  # checkpoint dir name + short hash of its weights
    ("labeled_at", pa.timestamp("us", tz="UTC")),
])


class LabelPredictor:
    """Actor: features of good rows -> Predictor.predict_batch; error rows pass through.
    Returns a pyarrow.Table in LABEL_SCHEMA (no feature columns)."""

    def __init__(self, checkpoint: str, device: str, fuse: dict[str, float] | None = None):
        import torch

        from mmsa_ray.predict import Predictor

        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device)
        self.fuse = fuse  # --fuse weights (mmsa_ray.fusion), None: no fused columns

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["id"])
        errors = [str_or_none(e) for e in batch["error"]]
        good = [i for i in range(n) if errors[i] is None]
        preds: dict[int, dict[str, Any]] = {}
        if good:
            rows = self.predictor.predict_batch({k: batch[k][good] for k in FEATURE_KEYS})
            preds = dict(zip(good, rows, strict=True))
        now = datetime.now(UTC)
        columns: dict[str, list] = {name: [] for name in LABEL_SCHEMA.names}
        for i in range(n):
            p = preds.get(i, {})
            columns["id"].append(str(batch["id"][i]))
            columns["uri"].append(str(batch["uri"][i]))
            columns["start"].append(float_or_none(batch["start"][i]))
            columns["end"].append(float_or_none(batch["end"][i]))
            columns["transcript"].append(str_or_none(batch["transcript"][i]))
            speech = {k: batch[k][i] if k in batch else None for k in SPEECH_COLUMNS}
            columns["asr_confidence"].append(float_or_none(speech["asr_confidence"]))
            columns["words"].append(None if speech["words"] is None else [dict(w) for w in speech["words"]])
            columns["speech"].append(str_or_none(speech["speech"]))
            columns["speaker"].append(str_or_none(speech["speaker"]))
            columns["speaker_confidence"].append(float_or_none(speech["speaker_confidence"]))
            reliable = speech["transcript_reliable"]
            columns["transcript_reliable"].append(None if reliable is None else bool(reliable))
            for k in ("emotion", "emotion_probs", "sentiment", "sentiment_probs", "emotion_uncertain",
                      "sentiment_uncertain", "modalities", "text_emotion", "audio_emotion", "video_emotion",
                      "emotion_driver"):
                columns[k].append(p.get(k))
            for k in FACE_COLUMNS:
                columns[k].append(_plain(batch[k][i]) if k in batch else None)
            if columns["face_count"][-1] is not None:  # a null count arrives as NaN in a float array
                count = columns["face_count"][-1]
                columns["face_count"][-1] = None if count != count else int(count)
            fused = fuse({k: columns[k][-1] for k in FUSED_INPUTS.values()}, self.fuse) if self.fuse else {}
            for k in ("fused_emotion", "fused_emotion_probs"):
                columns[k].append(fused.get(k))
            columns["error"].append(errors[i])
            reason = no_speech_reason(p.get("no_label_reason"), {
                "speech": columns["speech"][-1], "transcript_reliable": columns["transcript_reliable"][-1]})
            columns["no_label_reason"].append(reason)
            columns["model_id"].append(self.predictor.model_id)
            columns["labeled_at"].append(now)
        return pa.Table.from_pydict(columns, schema=LABEL_SCHEMA)


def _plain(value: Any) -> Any:
    """A cell as Ray's numpy batches hold it (arrays of dicts of arrays, numpy scalars) -> plain
    Python lists, dicts and numbers, as pyarrow takes them."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
