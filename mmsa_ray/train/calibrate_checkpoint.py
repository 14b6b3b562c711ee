"""`mmsa-ray calibrate --checkpoint DIR --meld-dir MELD`: fit the checkpoint's calibration on
a held-out split (MELD dev by default) and store it in its config.json, weights untouched.

Per head: the temperature T that minimises the dev negative log-likelihood of softmax(z / T),
the top-label step (the top probability recalibrated by a logistic regression on its logit),
and the threshold below which a calibrated top probability is flagged uncertain, chosen so
that the dev rows at or above it reach calibrate.TARGET_ACCURACY (mmsa_ray.calibrate). label,
serve and evaluate then apply it through Predictor and the evaluation report.
"""

from __future__ import annotations

import argparse
import sys

from mmsa_ray import checkpoint
from mmsa_ray.calibrate import TARGET_ACCURACY, calibration_record
from mmsa_ray.labels import MODALITIES
from mmsa_ray.train.evaluate import load_split, predict_logits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmsa-ray calibrate",
                                description="Fit per-head temperature scaling, top-label recalibration and the "
                                            "uncertainty threshold on a held-out split; store them in the "
                                            "checkpoint's config.json.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to calibrate (config.json is rewritten)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--features", help="a featurized Parquet directory (output of `mmsa-ray featurize`) to fit on")
    src.add_argument("--meld-dir", default=None,
                     help="MELD root (default $MELD_DIR) whose --split is featurized (cached) and fitted on")
    p.add_argument("--split", default="dev", choices=["train", "dev"],
                   help="MELD split with --meld-dir (default dev; MELD's test split is for evaluation only)")
    p.add_argument("--modalities", default=",".join(MODALITIES), help="modalities to use (default all it reads)")
    p.add_argument("--limit", type=int, default=None, help="fit on the first N records only (quick runs)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (with --meld-dir)")
    p.add_argument("--batch-size", type=int, default=256, help="clips per forward pass (default 256)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    p.add_argument("--emotion-target", type=float, default=TARGET_ACCURACY["emotion"],
                   help="dev accuracy the confident (not uncertain) emotion rows must reach "
                        f"(default {TARGET_ACCURACY['emotion']})")
    p.add_argument("--sentiment-target", type=float, default=TARGET_ACCURACY["sentiment"],
                   help=f"likewise for sentiment (default {TARGET_ACCURACY['sentiment']})")
    return p


def describe(record: dict) -> list[str]:
    """One line per head: temperature, top-label step, ECE before and after, the uncertainty threshold."""
    return [f"{head}: temperature {c['temperature']:.3f}, top {c['top_slope']:.3f} x logit "
            f"+ {c['top_intercept']:.3f}; ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}, "
            f"NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}; uncertain below {c['threshold']:.3f} "
            f"(the confident {c['coverage']:.1%} of rows reach accuracy {c['target_accuracy']:.2f})"
            for head, c in record.items() if head in ("emotion", "sentiment")]


def main(argv: list[str] | None = None) -> int:
    from mmsa_ray import console

    p = build_parser()
    args = console.parse_args(p, argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = checkpoint.load(args.checkpoint, map_location=device).to(device)
    data, errors, source, _ = load_split(p, args, model)
    if not len(data):
        p.error(f"no clips to fit on in {source}")
    logits = predict_logits(model, data, args.batch_size, device)
    split = f"MELD {args.split}" if not args.features else source
    record = calibration_record(logits, {"emotion": data.emotion, "sentiment": data.sentiment},
                                fitted_on=f"{split} ({len(data)} clips)",
                                targets={"emotion": args.emotion_target, "sentiment": args.sentiment_target})
    path = checkpoint.write_calibration(args.checkpoint, record)
    for line in describe(record):
        print(line)
    print(f"calibration written to {path}" + (f" ({len(errors)} clips failed to decode, left out)" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
