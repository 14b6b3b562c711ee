"""The batch wing: Ray Data jobs over an archive, written exactly once as Parquet.

`label` (files -> labeled rows) and `transcribe` (files -> utterances) are the jobs, each
a module with its `main(argv)`; `utterances` is their shared speech stage, `segments` the
window cutting of long files, `staging` and `attempts` the exactly-once and bad-media
bookkeeping of OUT. The job functions are `mmsa_ray.batch.label.label` and
`mmsa_ray.batch.transcribe.transcribe`.
"""

from mmsa_ray.batch.label import LabelConfig
from mmsa_ray.batch.rows import LABEL_SCHEMA
from mmsa_ray.batch.summary import LabelSummary
from mmsa_ray.batch.transcribe import TranscribeConfig, TranscribeSummary
from mmsa_ray.batch.utterances import UTTERANCE_SCHEMA, SpeechStageConfig

__all__ = ["LABEL_SCHEMA", "UTTERANCE_SCHEMA", "LabelConfig", "LabelSummary", "SpeechStageConfig", "TranscribeConfig",
           "TranscribeSummary"]
