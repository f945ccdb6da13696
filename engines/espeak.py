"""espeak-ng's phonemizer, called in process through ``libespeak-ng`` (no process per clause).

The library keeps one voice at a time in global state, so calls are serialised by a lock;
a call takes well under a millisecond per clause. Where the library is missing (another
distribution), the ``espeak-ng`` program does the same work, one process per call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import threading
from functools import lru_cache

from dubcore.errors import ConfigurationError, EngineError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_PHONEMES_TIE = 0x80
TIE = "^"
"""Joins the letters of one phoneme (an affricate, a diphthong), as ``--tie=^`` does."""
_MODE = _PHONEMES_IPA | _PHONEMES_TIE | (ord(TIE) << 8)


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if not found:
        raise ConfigurationError("espeak-ng is not installed (apt-get install espeak-ng)")
    return found


class _Library:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                              ctypes.c_int]
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                 _INITIALIZE_DONT_EXIT) <= 0:
            raise ConfigurationError("libespeak-ng failed to initialise (is its data installed?)")
        self._voice = ""
        self._lock = threading.Lock()

    def ipa(self, text: str, voice: str) -> str:
        """Phonemes of every clause of ``text``, joined by spaces."""
        data = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(data))
        out: list[str] = []
        with self._lock:
            if voice != self._voice:
                if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise EngineError(f"espeak-ng has no voice {voice!r}")
                self._voice = voice
            while pointer.value:
                chunk = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8,
                                                        _MODE)
                if chunk:
                    out.append(chunk.decode("utf-8", errors="replace"))
        return " ".join(" ".join(out).split())


_loading = threading.Lock()


@lru_cache(maxsize=1)
def _loaded() -> _Library | None:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        return _Library(ctypes.CDLL(name))
    except OSError:
        return None


def _library() -> _Library | None:
    """The process's one binding (initialised once: concurrent first calls wait for it)."""
    with _loading:
        return _loaded()


def ipa(text: str, voice: str) -> str:
    """IPA of ``text`` in espeak-ng voice ``voice`` (multi-letter phonemes tied with ``^``),
    language switches marked as espeak marks them, e.g. ``(en)``."""
    lib = _library()
    if lib is not None:
        return lib.ipa(text, voice)
    try:
        out = subprocess.run([espeak_binary(), "-q", "--ipa", f"--tie={TIE}", "-v", voice,
                              "--", text], capture_output=True, check=True, timeout=120)
    except subprocess.CalledProcessError as e:
        raise EngineError(f"espeak-ng failed: {e.stderr.decode(errors='replace')[:200]}") from e
    except subprocess.TimeoutExpired as e:
        raise EngineError("espeak-ng timed out") from e
    return " ".join(out.stdout.decode().split())
