"""Reads LibriSpeech-layout corpora.

Layout: ``<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` (or ``.wav``).

The speaker comes from the path. Frame phone labels, when the corpus has them, are found by
convention at ``<root>/phones/<split>.txt`` (s3prl/CPC per-frame file) or
``<root>/phones/<split>/`` (a folder of Montreal Forced Aligner ``<utt_id>.TextGrid`` files, at
any depth). Unusable data is skipped and recorded in the returned ``SkipLog``.
"""

from pathlib import Path

import soundfile

from .frames import SAMPLE_RATE, num_frames
from .records import SkipLog, Utterance
from .s3prl_labels import read_frame_labels
from .textgrid import textgrid_frame_labels

AUDIO_SUFFIXES = (".flac", ".wav")


def default_labels_path(root: Path, split: str) -> Path | None:
    for candidate in (Path(root) / "phones" / f"{split}.txt", Path(root) / "phones" / split):
        if candidate.exists():
            return candidate
    return None


def read_split(root: Path, split: str, labels: Path | None = None,
               frame_tolerance: int = 0) -> tuple[list[Utterance], SkipLog]:
    """Reads one split, sorted by utterance id.

    ``labels`` overrides the conventional label location. Utterances whose label count differs
    from their frame count by at most ``frame_tolerance`` frames are trimmed or padded with their
    last label (aligners that frame the audio differently differ by a frame or two); larger
    differences are skipped.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split {split!r}: no folder {split_dir}")
    if labels is None:
        labels = default_labels_path(root, split)
    elif not Path(labels).exists():
        raise FileNotFoundError(f"labels: {labels} does not exist")
    if frame_tolerance < 0:
        raise ValueError(f"frame_tolerance must be >= 0, got {frame_tolerance}")

    skips = SkipLog()
    frame_labels = read_frame_labels(labels, skips) if labels and Path(labels).is_file() else None
    textgrids = ({p.stem: p for p in sorted(Path(labels).rglob("*.TextGrid"))}
                 if labels and Path(labels).is_dir() else None)

    utterances: dict[str, Utterance] = {}
    for path in sorted(split_dir.glob("*/*/*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        speaker, chapter = path.parent.parent.name, path.parent.name
        if not path.stem.startswith(f"{speaker}-{chapter}-"):
            skips.skip(path, "file name is not <speaker>-<chapter>-<utt> for folder "
                             f"{speaker}/{chapter}")
            continue
        if path.stem in utterances:
            first = utterances[path.stem].audio_path
            skips.skip(path, f"utterance {path.stem} already read from {first}")
            continue
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError) as error:
            skips.skip(path, f"unreadable audio: {error}")
            continue
        if info.frames <= 0:
            skips.skip(path, "empty audio")
            continue
        if info.samplerate != SAMPLE_RATE:
            skips.skip(path, f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE}")
            continue
        if info.channels != 1:
            skips.skip(path, f"{info.channels} audio channels, expected mono")
            continue
        phones = None
        if frame_labels is not None or textgrids is not None:
            phones = _frame_labels(path, info.frames, frame_labels, textgrids, frame_tolerance, skips)
            if phones is None:
                continue
        utterances[path.stem] = Utterance(path.stem, path, speaker, split, info.frames, phones)
    return [utterances[k] for k in sorted(utterances)], skips


def _frame_labels(path, num_samples, frame_labels, textgrids, frame_tolerance, skips):
    """The utterance's labels fitted to its frame count, or None after recording why not."""
    utterance_id = path.stem
    if frame_labels is not None:
        phones = frame_labels.get(utterance_id)
    elif utterance_id in textgrids:
        try:
            phones = textgrid_frame_labels(textgrids[utterance_id], num_samples)
        except (ValueError, KeyError) as error:
            skips.skip(utterance_id, f"bad TextGrid: {error}")
            return None
    else:
        phones = None
    if phones is None:
        skips.skip(utterance_id, "no frame labels for this utterance")
        return None
    frames = num_frames(num_samples)
    if abs(len(phones) - frames) > frame_tolerance:
        skips.skip(utterance_id, f"{len(phones)} frame labels for {frames} audio frames "
                                 f"({num_samples} samples)")
        return None
    return tuple(phones[:frames]) + (phones[-1],) * (frames - len(phones))
