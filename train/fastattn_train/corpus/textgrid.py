"""Montreal Forced Aligner TextGrids (Praat's long "ooTextFile" format) as 10 ms frame labels."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frames import HOP_SAMPLES, SAMPLE_RATE, SILENCE, spans_to_frames

_ITEM = re.compile(r"item \[\d+\]:")
_ENTRY = re.compile(r"(?:intervals|points) \[\d+\]:")
_FIELD = re.compile(r"(\w+) = (.*)")


@dataclass
class Interval:
    start: float  # seconds
    end: float
    text: str


def read_textgrid(path: Path) -> dict[str, list[Interval]]:
    """Returns the interval tiers of a long-format TextGrid, by tier name."""
    raw = Path(path).read_bytes()
    # Praat writes UTF-16 with a byte-order mark when a label needs it; MFA writes UTF-8.
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    if '"ooTextFile"' not in text.split("\n", 1)[0] or not _ITEM.search(text):
        raise ValueError(f"{path} is not a TextGrid in Praat's long text format")
    tiers: list[dict] = []
    entry: dict | None = None
    for line in text.splitlines():
        line = line.strip()
        if _ITEM.fullmatch(line):
            tiers.append({"entries": []})
            entry = None
        elif _ENTRY.fullmatch(line) and tiers:
            entry = {}
            tiers[-1]["entries"].append(entry)
        elif (match := _FIELD.fullmatch(line)) and tiers:
            key, value = match.groups()
            target = entry if entry is not None else tiers[-1]
            target[key] = value[1:-1].replace('""', '"') if value.startswith('"') else value.strip()
    return {
        tier["name"]: [Interval(float(e["xmin"]), float(e["xmax"]), e["text"]) for e in tier["entries"]]
        for tier in tiers
        if tier.get("class") == "IntervalTier"
    }


def textgrid_frame_labels(path: Path, num_samples: int, tier: str = "phones") -> list[str]:
    """Frame labels of ``tier`` for an utterance of ``num_samples`` samples at 16 kHz.

    Empty intervals (MFA's silences) become the silence class. MFA names tiers
    ``"<speaker> - phones"`` when it aligns several speakers per file; those match too. Raises
    ValueError when the tier is missing or does not span the audio to within one frame.
    """
    tiers = read_textgrid(path)
    names = [n for n in tiers if n == tier or n.endswith(f" - {tier}")]
    if len(names) != 1:
        raise ValueError(f"{path} has {len(names)} interval tiers named {tier!r} (tiers: {list(tiers)})")
    intervals = tiers[names[0]]
    audio_seconds = num_samples / SAMPLE_RATE
    tier_end = intervals[-1].end if intervals else 0.0
    if abs(tier_end - audio_seconds) > HOP_SAMPLES / SAMPLE_RATE:
        raise ValueError(f"{path}: tier {names[0]!r} ends at {tier_end:.3f} s but the audio lasts "
                         f"{audio_seconds:.3f} s")
    starts = np.array([i.start for i in intervals]) * SAMPLE_RATE
    ends = np.array([i.end for i in intervals]) * SAMPLE_RATE
    # The last interval reaches the end of the audio even when rounding leaves it a little short.
    ends[-1] = max(ends[-1], num_samples + 1)
    return spans_to_frames(starts, ends, [i.text.strip() or SILENCE for i in intervals], num_samples)
