"""`ray job submit --working-dir . -- python jobs/transcribe.py ...`: same flags as `mmsa-ray transcribe`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: works without pip install

from mmsa_ray.cli import run  # noqa: E402

sys.exit(run("transcribe", sys.argv[1:]))
