"""Log-mel features on the 10 ms frame grid of ``corpus.frames``, cached on disk, and global CMVN.

80 mel bins, 25 ms Hann window (400 samples) zero-padded to a 512-point FFT, 10 ms hop, 16 kHz,
librosa's mel filterbank and ``center=True`` framing (an n-sample clip has ``1 + n // 160``
frames, the count of its phone labels). The STFT is numpy's: librosa's own log-mel path costs
about 18 s of numba compilation in a fresh environment, and the filterbank alone needs none.

Normalisation is global CMVN with statistics of the training split only. Never per-utterance
mean removal: it erases the speaker information that mean-pooled probes rely on.
"""

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile

from .corpus.frames import HOP_SAMPLES, SAMPLE_RATE
from .corpus.records import Utterance

# Bump when the computation changes, so that caches written by older code are not reused.
_FEATURE_VERSION = 1
# Added before the log: exact digital silence (common in synthetic audio) would otherwise give
# log(0) or a floor far below speech, and those frames would dominate the CMVN statistics.
_LOG_OFFSET = 1e-6
_DELTA_WINDOW = 2  # HTK/Kaldi regression over +-2 frames


@dataclass(frozen=True)
class FeatureSettings:
    n_mels: int = 80
    win_length: int = 400  # 25 ms
    n_fft: int = 512
    deltas: bool = False  # append deltas and delta-deltas: 3 * n_mels dims

    def __post_init__(self):
        if self.n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {self.n_mels}")
        if not HOP_SAMPLES <= self.win_length <= self.n_fft:
            raise ValueError(f"need {HOP_SAMPLES} <= win_length <= n_fft, got win_length="
                             f"{self.win_length}, n_fft={self.n_fft}")
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even to keep 1 + n // {HOP_SAMPLES} frames, "
                             f"got {self.n_fft}")

    @property
    def dim(self) -> int:
        return self.n_mels * (3 if self.deltas else 1)

    def key(self) -> str:
        described = json.dumps([_FEATURE_VERSION, SAMPLE_RATE, HOP_SAMPLES, asdict(self)])
        return hashlib.sha1(described.encode()).hexdigest()[:16]


@functools.cache
def _analysis(settings: FeatureSettings) -> tuple[np.ndarray, np.ndarray]:
    """The FFT-length analysis window (centred, as librosa pads it) and the mel filterbank."""
    window = librosa.util.pad_center(np.hanning(settings.win_length + 1)[:-1], size=settings.n_fft)
    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=settings.n_fft, n_mels=settings.n_mels)
    return window.astype(np.float32), mel.astype(np.float32)


def log_mel(audio: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """(frames, settings.dim) float32 features of mono float audio at 16 kHz."""
    window, mel = _analysis(settings)
    padded = np.pad(audio.astype(np.float32), settings.n_fft // 2)  # zeros, like librosa's default
    frames = np.lib.stride_tricks.sliding_window_view(padded, settings.n_fft)[::HOP_SAMPLES]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    features = np.log(power.astype(np.float32) @ mel.T + _LOG_OFFSET)
    if settings.deltas:
        delta = _delta(features)
        features = np.concatenate([features, delta, _delta(delta)], axis=1)
    return features.astype(np.float32)


def _delta(features: np.ndarray) -> np.ndarray:
    n = _DELTA_WINDOW
    padded = np.pad(features, ((n, n), (0, 0)), mode="edge")
    t = len(features)
    weighted = sum(k * (padded[n + k:n + k + t] - padded[n - k:n - k + t]) for k in range(1, n + 1))
    return weighted / (2 * sum(k * k for k in range(1, n + 1)))


def cache_features(utterance: Utterance, settings: FeatureSettings, cache_dir: Path) -> Path:
    """The .npy file of the utterance's features in ``cache_dir``, computed unless already valid.

    The cache file name hashes the settings and the audio file's path, size and modification
    time, so changing either computes new features. Stale files are never read again; deleting
    ``cache_dir`` at any time is safe. Raises ValueError for audio that does not match the record.
    """
    stat = os.stat(utterance.audio_path)
    audio_file = Path(utterance.audio_path).resolve()
    fingerprint = f"{settings.key()}|{audio_file}|{stat.st_size}|{stat.st_mtime_ns}"
    path = Path(cache_dir) / f"{utterance.id}-{hashlib.sha1(fingerprint.encode()).hexdigest()[:16]}.npy"
    if path.exists():
        return path
    audio, sample_rate = soundfile.read(str(utterance.audio_path), dtype="float32")
    if audio.ndim != 1 or sample_rate != SAMPLE_RATE or len(audio) != utterance.num_samples:
        raise ValueError(f"{utterance.audio_path}: decoded shape {audio.shape} at {sample_rate} Hz, "
                         f"expected {utterance.num_samples} mono samples at {SAMPLE_RATE} Hz")
    features = log_mel(audio, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: concurrent readers never see half a file.
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as f:
        np.save(f, features)
    os.replace(partial, path)
    return path


def cmvn_statistics(features: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation over all frames of ``features`` (the train split).

    One pass in float64, so the utterances need not all be in memory at once.
    """
    count, total, squares = 0, 0.0, 0.0
    for f in features:
        count += len(f)
        total = total + f.sum(axis=0, dtype=np.float64)
        squares = squares + np.square(f, dtype=np.float64).sum(axis=0)
    if count == 0:
        raise ValueError("cmvn_statistics needs at least one frame of features")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32)
