"""Builds a labelled LibriSpeech-layout speech corpus with eSpeak NG, offline and reproducibly.

Layout (readable by ``librispeech.read_split``)::

    <root>/manifest.json
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.wav    16 kHz, 16-bit
    <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt    LibriSpeech transcripts
    <root>/phones/<split>.txt                                           s3prl-format frame labels

Splits are by utterance and every speaker is in every split, so speaker probes can train and
test on the same speakers. Frame labels are eSpeak's phonemes (IPA, stress marks stripped,
pauses as ``frames.SILENCE``) on the 10 ms grid of ``frames``.

Determinism: eSpeak keeps state between utterances in one process, and re-initialising it
hangs, so the parent initialises eSpeak once, never synthesises, and forks one child per
utterance. Every child starts from the same state, and the output is byte-identical whatever
the number of workers or the order they finish in.

Resampling 22050 -> 16000 Hz uses soxr (libsoxr, "HQ"): what librosa uses by default, fast,
deterministic, and C only (no numba compilation).
"""

import functools
import importlib.metadata
import json
import multiprocessing
import shutil
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import soundfile
import soxr

from .espeak import ESPEAK_SAMPLE_RATE, Espeak
from .frames import SAMPLE_RATE, SILENCE, num_frames, spans_to_frames
from .records import SkipLog
from .s3prl_labels import format_frame_labels
from .sentences import utterance_text
from .voices import Voice, base_voice_text, random_voice

SPLITS = ("train", "dev", "test")
_STRESS_MARKS = "ˈˌ"


@dataclass(frozen=True)
class _Job:
    id: str
    split: str
    speaker: str
    text: str
    voice: Voice
    voice_path: str
    wav_path: Path


@functools.cache
def _espeak() -> Espeak:
    """This process's eSpeak, initialised once and never used to synthesise (see module doc)."""
    return Espeak()


def build_corpus(root: Path, *, speakers: int = 40, utterances_per_speaker: int = 30,
                 seed: int = 0, workers: int = 2, dev_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> dict:
    """Synthesises the corpus into ``root`` (which must not exist or be empty); returns the manifest.

    Each speaker gives ``max(1, round(fraction * utterances_per_speaker))`` utterances to dev and
    to test, the rest to train. Utterances that fail to synthesise are skipped and listed in the
    manifest under "skipped".
    """
    root = Path(root)
    if speakers < 1:
        raise ValueError(f"speakers must be >= 1, got {speakers}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    held_out = [max(1, round(f * utterances_per_speaker)) for f in (dev_fraction, test_fraction)]
    if utterances_per_speaker - sum(held_out) < 1:
        raise ValueError(f"utterances_per_speaker={utterances_per_speaker} leaves no training "
                         f"utterance after {held_out[0]} dev and {held_out[1]} test per speaker")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"root {root} exists and is not empty")

    started = time.monotonic()
    espeak = _espeak()
    base_voice = base_voice_text(espeak.data_path)
    # eSpeak 1.51 lower-cases voice-file paths and cuts them at 59 bytes: keep them short.
    voice_dir = Path(tempfile.mkdtemp(prefix="fav", dir="/tmp"))
    staging = root / ".staging"
    staging.mkdir(parents=True)
    try:
        jobs = _plan(root, speakers, utterances_per_speaker, held_out, seed, voice_dir, base_voice)
        _run(espeak, jobs, staging, workers)
        manifest = _collect(root, jobs, staging, seed, speakers, utterances_per_speaker,
                            espeak.version())
    finally:
        shutil.rmtree(voice_dir, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    manifest["build_seconds"] = time.monotonic() - started  # returned only: the file stays reproducible
    return manifest


def _plan(root, speakers, utterances_per_speaker, held_out, seed, voice_dir, base_voice):
    split_sizes = [utterances_per_speaker - sum(held_out), *held_out]
    jobs = []
    for s in range(speakers):
        speaker = str(100 + s)  # LibriSpeech-style numeric ids
        voice = random_voice(np.random.default_rng([seed, s]), name=f"fav{speaker}")
        voice_path = voice_dir / speaker
        voice_path.write_text(voice.file_text(base_voice), encoding="utf-8")
        utterance = 0
        for chapter, (split, size) in enumerate(zip(SPLITS, split_sizes), 1):
            for _ in range(size):
                utterance_id = f"{speaker}-{chapter}-{utterance:04d}"
                text = utterance_text(np.random.default_rng([seed, s, utterance]))
                wav_path = root / split / speaker / str(chapter) / f"{utterance_id}.wav"
                jobs.append(_Job(utterance_id, split, speaker, text, voice, str(voice_path), wav_path))
                utterance += 1
    for job in jobs:
        job.wav_path.parent.mkdir(parents=True, exist_ok=True)
    return jobs


def _run(espeak, jobs, staging, workers):
    """Runs each job in its own forked child, at most ``workers`` at a time."""
    context = multiprocessing.get_context("fork")
    running = {}
    for job in jobs:
        while len(running) >= workers:
            _reap(running, staging)
        process = context.Process(target=_synthesize_in_child, args=(espeak, job, staging))
        process.start()
        running[process.sentinel] = (process, job)
    while running:
        _reap(running, staging)


def _reap(running, staging):
    for sentinel in wait(list(running)):
        process, job = running.pop(sentinel)
        process.join()
        error_file = staging / f"{job.id}.err"
        if process.exitcode != 0 and not error_file.exists():
            error_file.write_text(f"synthesis process exited with code {process.exitcode}")


def _synthesize_in_child(espeak, job, staging):
    try:
        labels = _synthesize(espeak, job)
        (staging / f"{job.id}.txt").write_text(format_frame_labels(job.id, labels), encoding="utf-8")
    except Exception as error:  # reported by the parent as a skipped utterance
        (staging / f"{job.id}.err").write_text(f"{type(error).__name__}: {error}", encoding="utf-8")
        raise SystemExit(1)


def _synthesize(espeak, job) -> list[str]:
    espeak.set_voice_file(job.voice_path, job.voice.name)
    espeak.set_rate(job.voice.words_per_minute)
    synthesis = espeak.synthesize(job.text)
    if len(synthesis.audio) == 0:
        raise ValueError("eSpeak produced no audio")
    audio = soxr.resample(synthesis.audio, ESPEAK_SAMPLE_RATE, SAMPLE_RATE, quality="HQ")

    starts = np.array(synthesis.phone_starts, np.float64)
    ends = np.append(starts[1:], len(synthesis.audio))
    names = [name.strip(_STRESS_MARKS) or SILENCE for name in synthesis.phone_names]
    keep = ends > starts  # about 2% of eSpeak's events have zero length
    to_16k = SAMPLE_RATE / ESPEAK_SAMPLE_RATE
    labels = spans_to_frames(starts[keep] * to_16k, ends[keep] * to_16k,
                             [n for n, k in zip(names, keep) if k], len(audio))
    soundfile.write(str(job.wav_path), audio, SAMPLE_RATE, subtype="PCM_16")
    return labels


def _collect(root, jobs, staging, seed, speakers, utterances_per_speaker, espeak_version):
    skips = SkipLog()
    label_lines = {split: [] for split in SPLITS}
    transcripts: dict[Path, list[str]] = {}
    utterances, phones = [], set()
    for job in jobs:
        error_file, label_file = staging / f"{job.id}.err", staging / f"{job.id}.txt"
        if error_file.exists() or not label_file.exists():
            reason = error_file.read_text() if error_file.exists() else "no labels were written"
            skips.skip(job.id, f"synthesis failed: {reason}")
            job.wav_path.unlink(missing_ok=True)
            continue
        line = label_file.read_text(encoding="utf-8")
        num_samples = soundfile.info(str(job.wav_path)).frames
        labels = line.split()[1:]
        if len(labels) != num_frames(num_samples):  # cannot happen unless the code above is wrong
            raise AssertionError(f"{job.id}: {len(labels)} labels for {num_samples} samples")
        phones.update(labels)
        label_lines[job.split].append(line)
        transcript = job.wav_path.parent / f"{job.speaker}-{job.wav_path.parent.name}.trans.txt"
        words = "".join(c for c in job.text.upper() if c.isalpha() or c in " '").split()
        transcripts.setdefault(transcript, []).append(f"{job.id} {' '.join(words)}\n")
        utterances.append({"id": job.id, "split": job.split, "speaker": job.speaker,
                           "path": str(job.wav_path.relative_to(root)),
                           "num_samples": num_samples, "text": job.text})
    (root / "phones").mkdir()
    for split, lines in label_lines.items():
        (root / "phones" / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    for path, lines in transcripts.items():
        path.write_text("".join(lines), encoding="utf-8")
    voices = {job.speaker: job.voice.as_json() for job in jobs}
    return {
        "format": "fastattn synthetic speech corpus, version 1",
        "generator": {"espeak_ng": espeak_version,
                      "espeakng_loader": importlib.metadata.version("espeakng-loader"),
                      "resampler": "soxr HQ", "seed": seed, "speakers": speakers,
                      "utterances_per_speaker": utterances_per_speaker},
        "sample_rate": SAMPLE_RATE,
        "frame_labels": {"format": "s3prl per-frame, 10 ms, librosa center=True grid",
                         "silence": SILENCE, "files": {s: f"phones/{s}.txt" for s in SPLITS}},
        "phones": sorted(phones),
        "speakers": sorted(voices),
        "splits": {s: {"utterances": sum(u["split"] == s for u in utterances),
                       "seconds": round(sum(u["num_samples"] for u in utterances
                                            if u["split"] == s) / SAMPLE_RATE, 2)}
                   for s in SPLITS},
        "voices": voices,
        "utterances": utterances,
        "skipped": [{"what": e.what, "reason": e.reason} for e in skips.entries],
    }
