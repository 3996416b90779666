"""ctypes binding to the eSpeak NG C API shipped in the ``espeakng-loader`` wheel.

Only what the corpus builder needs: synchronous synthesis into memory, with phoneme events that
carry the exact sample index where each phoneme starts. The wheel is pinned
(``espeakng-loader==0.2.4``, libespeak-ng 1.52) because audio differs between eSpeak versions.
"""

import ctypes
from dataclasses import dataclass

import numpy as np

ESPEAK_SAMPLE_RATE = 22050

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAMETER_RATE = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


@dataclass
class Synthesis:
    """One synthesised utterance at 22050 Hz.

    ``phone_starts[i]`` is the sample where ``phone_names[i]`` begins; it lasts until the next
    start, the last one until the end of ``audio``. Names are eSpeak IPA, stress marks included.
    """

    audio: np.ndarray  # int16, (samples,)
    phone_starts: list[int]
    phone_names: list[str]


class Espeak:
    """An initialised eSpeak NG library. One per process: the library keeps global state."""

    def __init__(self):
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                                ctypes.c_int]
        self._lib.espeak_SetVoiceByFile.argtypes = [ctypes.c_char_p]
        self._lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                           ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                           ctypes.c_void_p, ctypes.c_void_p]
        sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA)
        if sample_rate != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(f"eSpeak NG initialisation returned {sample_rate}, expected a sample "
                               f"rate of {ESPEAK_SAMPLE_RATE} Hz")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        # Kept on self: ctypes frees a callback whose Python object is collected.
        self._callback = _SynthCallback(self._on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)

    def version(self) -> str:
        self._lib.espeak_Info.restype = ctypes.c_char_p
        return self._lib.espeak_Info(None).decode()

    def set_voice_file(self, path: str, expected_name: str) -> None:
        """Loads a voice file and checks it took effect.

        eSpeak falls back to its default voice without an error when it cannot use a file, and
        1.51 lower-cases the path and cuts it at 59 bytes, so the caller passes the ``name`` the
        file declares and a mismatch raises.
        """
        if len(path.encode()) > 59 or path != path.lower():
            raise ValueError(f"voice file path {path!r} must be lower-case and at most 59 bytes")
        status = self._lib.espeak_SetVoiceByFile(path.encode())
        voice = self._lib.espeak_GetCurrentVoice()
        loaded = voice.contents.name.decode() if voice and voice.contents.name else None
        if status != 0 or loaded != expected_name:
            raise RuntimeError(f"eSpeak did not load voice file {path!r}: status {status}, "
                               f"current voice {loaded!r}, expected {expected_name!r}")

    def set_rate(self, words_per_minute: int) -> None:
        self._lib.espeak_SetParameter(_PARAMETER_RATE, words_per_minute, 0)

    def synthesize(self, text: str) -> Synthesis:
        self._chunks, self._events = [], []
        encoded = text.encode()
        status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0,
                                        _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}")
        self._lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        starts = [sample for sample, _ in self._events]
        names = [name for _, name in self._events]
        return Synthesis(audio, starts, names)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                name = events[i].id.string.decode("utf-8", errors="replace")
                self._events.append((events[i].sample, name))
            i += 1
        return 0  # 0 = continue synthesis
