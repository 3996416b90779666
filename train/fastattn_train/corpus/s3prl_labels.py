"""Per-frame phone label files in the s3prl/CPC format: one ``utt_id p1 p2 ... pT`` line each.

Each label covers one 10 ms frame. s3prl's LibriSpeech files use integer class ids; the corpus
builder writes IPA phone names. Both are read as strings.
"""

from pathlib import Path

from .records import SkipLog


def read_frame_labels(path: Path, skips: SkipLog) -> dict[str, tuple[str, ...]]:
    labels: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{line_number}"
            if len(fields) == 1:
                skips.skip(where, f"utterance {fields[0]!r} has no frame labels")
            elif fields[0] in labels:
                skips.skip(where, f"utterance {fields[0]!r} is labelled twice; the first is kept")
            else:
                labels[fields[0]] = tuple(fields[1:])
    return labels


def format_frame_labels(utterance_id: str, phones: list[str]) -> str:
    if any(not p or p.split() != [p] for p in phones):
        raise ValueError(f"phones of {utterance_id!r} must be non-empty and free of whitespace")
    return " ".join([utterance_id, *phones]) + "\n"
