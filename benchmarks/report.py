"""The report at scale: writing it and opening it in headless Chromium, 10,000 rows against
100, in one run.

    python benchmarks/report.py [--rows 10000] [--baseline 100]

Label outputs are written here in LABEL_SCHEMA with random probabilities (what is measured
is the report, not the model), in two shapes:
  many files   rows spread over 50 files of 3 s windows (an archive cut with --segment)
  one file     every row a window of one file (a long recording): its timeline is drawn
               on canvas past 2,000 marks and its lines are paginated
For each: `mmsa-ray report` wall time, the page's size, and in Chromium the time from
navigation to every visible timeline drawn, and from a filter change to the redraw.
Printed as seconds and as the ratio against the --baseline row count in the same shape,
so a page that stays responsive shows ratios far below rows/baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def write_labels(out: Path, n: int, files: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmsa_ray.batch.label import LABEL_SCHEMA
    from mmsa_ray.labels import EMOTIONS, SENTIMENTS

    rng = np.random.default_rng(seed)
    ep = rng.dirichlet(np.ones(7), n).astype(np.float32)
    sp = rng.dirichlet(np.ones(3), n).astype(np.float32)
    rows = []
    for i in range(n):
        f, k = i % files, i // files
        uri = f"s3://bucket/archive/file{f:04d}.mp4"
        rows.append({"id": f"{uri}#t={3 * k},{3 * k + 3}", "uri": uri, "start": 3.0 * k, "end": 3.0 * k + 3,
                     "transcript": "so this is what we said " * int(rng.integers(0, 4)),
                     "emotion": EMOTIONS[int(ep[i].argmax())], "emotion_probs": ep[i].tolist(),
                     "sentiment": SENTIMENTS[int(sp[i].argmax())], "sentiment_probs": sp[i].tolist(),
                     "modalities": ["text", "audio", "video"], "text_emotion": "joy", "audio_emotion": "neutral",
                     "video_emotion": "anger", "error": None, "model_id": "bench", "labeled_at": None})
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), out / "part-00000.parquet")


def measure(labels: Path, out: Path) -> dict[str, float]:
    import browser
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from mmsa_ray.report import html as report

    t0 = time.perf_counter()
    report.make_report(report.ReportConfig(labels=str(labels), output=str(out)))
    write_s = time.perf_counter() - t0
    ready = "const done = arguments[0]; window.mmsaReportReady.then(() => done(true), e => done(String(e)))"
    with browser.chrome() as d:
        t0 = time.perf_counter()
        d.get((out / "index.html").as_uri())
        assert d.execute_async_script(ready) is True
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        Select(d.find_element(By.ID, "f-emotion")).select_by_value("joy")
        d.execute_async_script(
            "const done = arguments[0]; setTimeout(() => window.mmsaReportReady.then(() => done(true)), 0)"
        )
        filter_s = time.perf_counter() - t0
        errors = browser.console_errors(d)
    assert not errors, errors
    return {"write_s": write_s, "open_s": open_s, "filter_s": filter_s,
            "mb": (out / "index.html").stat().st_size / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--baseline", type=int, default=100)
    a = p.parse_args()
    from mmsa_ray.timeline import vega_bundle

    vega_bundle()  # bundled (or read from the cache) once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'shape':<11} {'rows':>6} {'write s':>8} {'page MB':>8} {'open s':>7} {'filter s':>8}"
              f"   ratios vs {a.baseline} rows")
        for shape, files in (("many files", 50), ("one file", 1)):
            base = None
            for n in (a.baseline, a.rows):
                labels = Path(tmp) / f"{shape}-{n}" / "labels"
                write_labels(labels, n, min(files, n))
                m = measure(labels, labels.parent / "report")
                ratio = "" if base is None else "   " + "  ".join(
                    f"{k} x{m[k] / base[k]:.1f}" for k in ("write_s", "open_s", "filter_s"))
                print(f"{shape:<11} {n:>6} {m['write_s']:>8.2f} {m['mb']:>8.2f} {m['open_s']:>7.2f}"
                      f" {m['filter_s']:>8.2f}{ratio}")
                base = base or m
    return 0


if __name__ == "__main__":
    sys.exit(main())
