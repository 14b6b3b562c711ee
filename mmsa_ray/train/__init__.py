"""The train wing: MELD (or clips laid out like it) -> cached features -> Ray Train -> a
checkpoint and its dev report.

`driver` is `mmsa-ray train` (datasets, TorchTrainer, best checkpoint), `loop` the worker
loop it runs on every Ray Train worker, `featurize` the frozen encoders' feature cache,
`evaluate` the metrics and reports, `meld` the MELD reader, `sample_data` the synthetic
MELD-layout data of the demo and tests.
"""

from mmsa_ray.train.driver import JobConfig, run
from mmsa_ray.train.loop import TrainConfig
from mmsa_ray.train.meld import ClipRecord, MeldFormatError, read_meld
from mmsa_ray.train.sample_data import SampleConfig, make_sample_data

__all__ = ["ClipRecord", "JobConfig", "MeldFormatError", "SampleConfig", "TrainConfig", "make_sample_data",
           "read_meld", "run"]
