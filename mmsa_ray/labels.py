"""The label sets and the modality order: fixed here, used everywhere.

Indices into model outputs, probability vectors in Parquet rows and JSON responses
all follow these tuples. Changing an order invalidates every checkpoint.
"""

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
# Column order of the [B, 3] modality presence mask.
MODALITIES: tuple[str, ...] = ("text", "audio", "video")


def emotion_index(name: str) -> int:
    """Index of an emotion name (case-insensitive); ValueError names the valid set."""
    return _index(EMOTIONS, name, "emotion")


def sentiment_index(name: str) -> int:
    """Index of a sentiment name (case-insensitive); ValueError names the valid set."""
    return _index(SENTIMENTS, name, "sentiment")


def parse_modalities(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'text,audio' or ['text', 'audio'] -> the subset in canonical MODALITIES order."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(MODALITIES))
    if unknown or not names:
        raise ValueError(f"modalities must be a non-empty subset of {list(MODALITIES)}, got {spec!r}")
    return tuple(m for m in MODALITIES if m in names)


def _index(names: tuple[str, ...], name: str, kind: str) -> int:
    key = name.strip().lower()
    if key not in names:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {list(names)}")
    return names.index(key)
