"""The 10 ms frame grid shared by phone labels and features.

Features use librosa's ``center=True`` convention: an n-sample clip at 16 kHz has
``1 + n // 160`` frames and frame i is centred on sample ``160 * i``. Labels are defined on the
same grid, so the label count of an utterance always equals its feature frame count.
"""

import numpy as np

SAMPLE_RATE = 16000
HOP_SAMPLES = 160  # 10 ms
SILENCE = "sil"  # the label of pauses and of frames outside every phone


def num_frames(num_samples: int) -> int:
    return 1 + num_samples // HOP_SAMPLES


def spans_to_frames(starts: np.ndarray, ends: np.ndarray, names: list[str],
                    num_samples: int) -> list[str]:
    """Labels each frame with the span that contains its centre; frames in no span get SILENCE.

    ``starts``/``ends`` are in samples (16 kHz, may be fractional), half-open, sorted and not
    overlapping.
    """
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    if len(starts) == 0:
        return [SILENCE] * num_frames(num_samples)
    centres = np.arange(num_frames(num_samples)) * HOP_SAMPLES
    span = np.searchsorted(starts, centres, side="right") - 1
    inside = (span >= 0) & (centres < ends[np.maximum(span, 0)])
    return [names[s] if ok else SILENCE for s, ok in zip(span, inside)]
