"""What corpus readers return: utterance records, and the data they skipped and why."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    """One utterance of a LibriSpeech-layout corpus.

    ``phones`` holds one label per 10 ms frame (``frames.num_frames(num_samples)`` of them), or is
    None when the corpus has no frame labels for this split.
    """

    id: str
    audio_path: Path
    speaker: str
    split: str
    num_samples: int
    phones: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Skipped:
    """A piece of data a reader or the builder left out, and why."""

    what: str  # an utterance id or a file path
    reason: str


@dataclass
class SkipLog:
    """Collects skipped data so that bad data is never fatal and never silent."""

    entries: list[Skipped] = field(default_factory=list)

    def skip(self, what: str, reason: str) -> None:
        self.entries.append(Skipped(str(what), reason))
        log.warning("skipped %s: %s", what, reason)

    def __len__(self) -> int:
        return len(self.entries)
