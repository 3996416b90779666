"""Tiny LibriSpeech-layout corpora written by the tests themselves: tones, no speech, no espeak."""

from pathlib import Path

import numpy as np
import soundfile

from fastattn_train.corpus.frames import num_frames

SAMPLE_RATE = 16000


def write_tone(path: Path, num_samples: int, frequency: float, amplitude: float = 0.3,
               sample_rate: int = SAMPLE_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(num_samples) / sample_rate
    soundfile.write(str(path), amplitude * np.sin(2 * np.pi * frequency * t), sample_rate,
                    subtype="PCM_16")


def write_split(root: Path, split: str, utterances: dict[str, tuple[int, float]],
                amplitude: float = 0.3) -> None:
    """Writes ``{utt_id: (num_samples, frequency)}`` as tones and s3prl labels for them.

    Ids are ``<speaker>-<chapter>-<utt>``; ids ending in an odd digit are FLAC, the rest WAV. Each
    frame is labelled "lo" or "hi" by the tone's frequency, and the first frame "sil".
    """
    lines = []
    for utterance_id, (num_samples, frequency) in utterances.items():
        speaker, chapter, _ = utterance_id.split("-")
        suffix = ".flac" if int(utterance_id[-1]) % 2 else ".wav"
        write_tone(root / split / speaker / chapter / f"{utterance_id}{suffix}", num_samples,
                   frequency, amplitude)
        tone = "hi" if frequency > 1000 else "lo"
        lines.append(" ".join([utterance_id, "sil"] + [tone] * (num_frames(num_samples) - 1)))
    (root / "phones").mkdir(parents=True, exist_ok=True)
    (root / "phones" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_two_speaker_corpus(root: Path, dev_amplitude: float = 0.3) -> None:
    """Speakers 11 and 22 in train and dev; lengths that are not multiples of the hop."""
    write_split(root, "train", {"11-1-0000": (8000, 300.0), "11-1-0001": (6401, 2000.0),
                                "22-5-0000": (4799, 440.0), "22-5-0001": (9000, 3000.0)})
    write_split(root, "dev", {"11-2-0000": (5000, 500.0), "22-6-0001": (3210, 2500.0)},
                amplitude=dev_amplitude)
