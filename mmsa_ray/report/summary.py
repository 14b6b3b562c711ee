"""The report's archive-wide summary: counts, failures grouped by cause, models, label
distributions, confidence and modality coverage (`summarize`), and its charts as Vega-Lite
specs over aggregated values only (`summary_charts`), so the page stays small at any size."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from mmsa_ray import timeline
from mmsa_ray.labels import EMOTIONS, MODALITIES, SENTIMENTS


def top_probability(probs: list[float] | None) -> float | None:
    return None if not probs else float(max(probs))


def cause(error: str, uri: str) -> str:
    """'<uri>: <cause>' -> '<cause>' (the uri is the row's own; grouping wants the rest)."""
    if uri and error.startswith(uri + ": "):
        return error[len(uri) + 2:]
    return error


def summarize(raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Archive-wide numbers: rows, files, labeled, failed, failures by cause (count and up to
    5 example ids, most frequent first), models (rows per model_id), emotion and sentiment
    counts, mean top probabilities, modality coverage (rows per modality and per set)."""
    ok = [r for r in raw if not r.get("error") and r.get("emotion")]
    no_signal = Counter(r.get("no_label_reason") or "no signal" for r in raw if not r.get("error")
                        and not r.get("emotion"))
    failures: dict[str, list[str]] = defaultdict(list)
    for r in raw:
        if r.get("error"):
            failures[cause(r["error"], r.get("uri") or "")].append(r["id"])
    ec = [top_probability(r.get("emotion_probs")) for r in ok if r.get("emotion_probs")]
    sc = [top_probability(r.get("sentiment_probs")) for r in ok if r.get("sentiment_probs")]
    times = [r["labeled_at"] for r in raw if r.get("labeled_at") is not None]
    return {
        "rows": len(raw),
        "files": len({r.get("uri") or r["id"] for r in raw}),
        "labeled": len(ok),
        "no_signal": sum(no_signal.values()),  # rows without a label: none of their modalities had a signal
        "no_signal_reasons": no_signal.most_common(),
        # stretches of speech in which speech recognition found no words (`speech` = "unrecognized")
        "unrecognized": sum(1 for r in raw if r.get("speech") == "unrecognized"),
        "unrecognized_s": sum(float(r["end"]) - float(r["start"]) for r in raw if r.get("speech") == "unrecognized"),
        # calibrated top probability below the checkpoint's threshold on either head
        "uncertain": sum(1 for r in ok if r.get("emotion_uncertain") or r.get("sentiment_uncertain")),
        "failed": len(raw) - len(ok) - sum(no_signal.values()),
        "failures": sorted(((c, len(ids), sorted(ids)[:5]) for c, ids in failures.items()),
                           key=lambda x: (-x[1], x[0])),
        "models": Counter(r.get("model_id") or "(unknown)" for r in raw).most_common(),
        "emotions": Counter(r["emotion"] for r in ok if r.get("emotion")),
        "sentiments": Counter(r["sentiment"] for r in ok if r.get("sentiment")),
        "mean_emotion_confidence": sum(ec) / len(ec) if ec else None,
        "mean_sentiment_confidence": sum(sc) / len(sc) if sc else None,
        "confidences": ec,
        "modalities": {m: sum(1 for r in ok if m in (r.get("modalities") or [])) for m in MODALITIES},
        "modality_sets": Counter("+".join(r.get("modalities") or []) or "none" for r in ok).most_common(),
        "labeled_at": (min(times), max(times)) if times else None,
    }


def summary_charts(s: dict[str, Any]) -> dict[str, dict]:
    """Vega-Lite specs (altair) of the summary, each over aggregated values only:
    emotions, sentiments, confidence histogram (bins of 0.05), modality coverage, failures."""
    import altair as alt

    charts: dict[str, Any] = {}
    heads = (("emotion", EMOTIONS, timeline.EMOTION_COLOURS), ("sentiment", SENTIMENTS, timeline.SENTIMENT_COLOURS))
    for head, classes, colours in heads:
        counts = [{head: c, "rows": s[f"{head}s"].get(c, 0)} for c in classes]
        scale = alt.Scale(domain=list(classes), range=[colours[c] for c in classes])
        charts[f"chart-{head}s"] = alt.Chart(alt.Data(values=counts), title=f"{head}s").mark_bar().encode(
            x=alt.X(f"{head}:N", sort=list(classes), title=None),
            y=alt.Y("rows:Q", title="rows"),
            color=alt.Color(f"{head}:N", scale=scale, legend=None),
            tooltip=[f"{head}:N", "rows:Q"])
    bins = Counter(min(int(c / 0.05), 19) for c in s["confidences"])
    hist = [{"from": round(b * 0.05, 2), "to": round((b + 1) * 0.05, 2), "rows": bins.get(b, 0)} for b in range(20)]
    charts["chart-confidence"] = alt.Chart(
        alt.Data(values=hist), title="emotion confidence (top probability)").mark_bar().encode(
        x=alt.X("from:Q", bin="binned", scale=alt.Scale(domain=[0, 1]), title="probability"),
        x2="to:Q", y=alt.Y("rows:Q", title="rows"), tooltip=["from:Q", "to:Q", "rows:Q"])
    cov = [{"modalities": m, "rows": n} for m, n in s["modality_sets"]]
    charts["chart-modalities"] = alt.Chart(alt.Data(values=cov), title="modalities present").mark_bar().encode(
        y=alt.Y("modalities:N", sort="-x", title=None), x=alt.X("rows:Q", title="rows"),
        tooltip=["modalities:N", "rows:Q"])
    if s["failures"]:
        fail = [{"cause": c if len(c) <= 60 else c[:57] + "...", "full": c, "rows": n}
                for c, n, _ in s["failures"][:15]]
        charts["chart-failures"] = alt.Chart(
            alt.Data(values=fail), title="failures by cause").mark_bar(color="#444").encode(
            y=alt.Y("cause:N", sort="-x", title=None), x=alt.X("rows:Q", title="rows"),
            tooltip=[alt.Tooltip("full:N", title="cause"), "rows:Q"])
    return {k: c.properties(width=260, height=160).to_dict() for k, c in charts.items()}
