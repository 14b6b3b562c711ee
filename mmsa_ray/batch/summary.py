"""What a `mmsa-ray label` run did: LabelSummary, counted from OUT's rows after the run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.fs as pafs

from mmsa_ray.batch.rows import LABEL_SCHEMA
from mmsa_ray.batch.speakers import ArchiveSpeakers
from mmsa_ray.batch.utterances import SpeechCoverage


@dataclass
class LabelSummary:
    """What a run did. `skipped`: ids already in OUT from an earlier run."""

    staged: int  # items listed from INPUT
    labeled: int  # rows written by this run with a label
    failed: int  # rows written by this run with an error
    skipped: int  # items not processed because OUT already has them
    total_rows: int  # rows in OUT after the run
    seconds: float
    output: str
    errors: list[tuple[str, str]] = field(default_factory=list)  # a few (id, error) of this run
    stats: str = ""  # Ray Data's per-operator stats of this run
    other_model_rows: int = 0  # rows in OUT labeled by a model other than this run's checkpoint
    notes: list[str] = field(default_factory=list)  # hints for the user, printed last
    no_signal: int = 0  # rows written by this run without error and without a label (no_label_reason)
    no_signal_reasons: list[tuple[str, int]] = field(default_factory=list)  # (reason, rows), most first
    coverage: SpeechCoverage | None = None  # of this run's rows, when it transcribed speech
    speakers: ArchiveSpeakers | None = None  # OUT's speakers after the run, when it found them

    def __str__(self) -> str:
        lines = [
            f"labeled {self.labeled}, {f'no signal {self.no_signal}, ' if self.no_signal else ''}"
            f"failed {self.failed}, skipped {self.skipped} (already in output) "
            f"of {self.staged} items in {self.seconds:.1f} s; {self.output} holds {self.total_rows} rows",
        ]
        lines += [f"  failed: {i}: {e}" for i, e in self.errors]
        if self.coverage is not None:
            lines.append(f"  {self.coverage}")
        if self.speakers is not None:
            lines.append(f"  {self.speakers}")
        if self.no_signal:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.no_signal_reasons)
            lines.append(f"  no signal: {self.no_signal} rows have no label ({reasons}); see no_label_reason")
        if self.other_model_rows:
            lines.append(f"  note: {self.other_model_rows} rows in {self.output} come from another model (see "
                         "model_id); ids already there are never relabeled: give a new --output to relabel them")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def summarize(fs: pafs.FileSystem, path: str, run_start: datetime, staged: int, output: str,
              model_id: str | None = None) -> LabelSummary:
    """Counts from OUT's `id`, `error`, `labeled_at` and `model_id` columns, read in batches."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    total = labeled = failed = other = 0
    errors: list[tuple[str, str]] = []
    reasons: Counter[str] = Counter()
    coverage = SpeechCoverage()
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=LABEL_SCHEMA)
    cutoff = pa.scalar(run_start, type=LABEL_SCHEMA.field("labeled_at").type)
    columns = ["id", "error", "no_label_reason", "labeled_at", "model_id", "speech", "start", "end",
               "transcript_reliable"]
    for batch in dataset.to_batches(columns=columns):
        total += batch.num_rows
        if model_id is not None:
            other += pc.sum(pc.not_equal(batch.column("model_id"), model_id)).as_py() or 0
        this_run = pc.greater_equal(batch.column("labeled_at"), cutoff)
        coverage.add(batch.filter(this_run))
        is_err = pc.is_valid(batch.column("error"))
        failed_mask = pc.and_(this_run, is_err)
        failed += pc.sum(failed_mask).as_py() or 0
        unlabeled = pc.and_(this_run, pc.is_valid(batch.column("no_label_reason")))
        reasons.update(batch.filter(unlabeled).column("no_label_reason").to_pylist())
        labeled += pc.sum(pc.and_(pc.and_(this_run, pc.invert(is_err)), pc.invert(unlabeled))).as_py() or 0
        if len(errors) < 10 and (pc.sum(failed_mask).as_py() or 0):
            sub = batch.filter(failed_mask)
            pairs = zip(sub.column("id").to_pylist(), sub.column("error").to_pylist(), strict=True)
            errors += list(pairs)[: 10 - len(errors)]
    no_signal = sum(reasons.values())
    return LabelSummary(staged=staged, labeled=labeled, failed=failed, skipped=staged - labeled - failed - no_signal,
                        total_rows=total, seconds=0.0, output=output, errors=errors, other_model_rows=other,
                        no_signal=no_signal, no_signal_reasons=reasons.most_common(),
                        coverage=coverage if coverage.transcribed_s or coverage.unrecognized else None)
