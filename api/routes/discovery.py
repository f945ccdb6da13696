"""Discovery: languages per stage with the engine serving each, voices, options, balance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import PrincipalDep
from api.deps import DbDep, ServicesDep
from api.schemas import (
    UPLOAD_TYPES,
    Balance,
    ErrorBody,
    LanguagesOut,
    OptionsOut,
    StageLanguages,
    VoiceOut,
    VoicesOut,
)
from dubcore import accounts
from dubcore.contracts import MixingMode
from dubcore.languages import (
    ESPEAK_VOICES,
    SYNTHESIS_LANGUAGES,
    TRANSCRIBE_LANGUAGES,
    TRANSLATION_PAIRS,
    voice_catalog,
)

router = APIRouter(prefix="/v1", tags=["discovery"], responses={
    code: {"model": ErrorBody} for code in (401, 422, 429)})


@router.get("/languages", response_model=LanguagesOut)
def languages(services: ServicesDep, who: PrincipalDep) -> LanguagesOut:
    """Which languages each stage handles on this deployment, and with which engine."""
    tts = services.settings.tts_engine
    speech_engine = "kokoro + piper + espeak-ng" if tts == "auto" else tts
    pairs = sorted(TRANSLATION_PAIRS)
    return LanguagesOut(stages=[
        StageLanguages(stage="transcribe", engine="faster-whisper",
                       languages=sorted(TRANSCRIBE_LANGUAGES)),
        StageLanguages(stage="translate", engine="bergamot",
                       languages=sorted({b for _, b in pairs})),
        StageLanguages(stage="synthesize", engine=speech_engine,
                       languages=sorted(SYNTHESIS_LANGUAGES)),
    ], translation_pairs=pairs)


@router.get("/voices", response_model=VoicesOut)
def voices(services: ServicesDep, who: PrincipalDep,
           language: Annotated[str | None, Query(examples=["pt-BR"])] = None) -> VoicesOut:
    """Voices per target language (``voice_key`` is what the speaker table takes)."""
    tags = [language] if language else sorted(ESPEAK_VOICES)
    tts = services.settings.tts_engine
    return VoicesOut(voices={tag: [VoiceOut(**v) for v in voice_catalog(tag, tts)]
                             for tag in tags})


@router.get("/options", response_model=OptionsOut)
def options(services: ServicesDep, who: PrincipalDep) -> OptionsOut:
    """Accepted source and target languages, mixing modes and upload types."""
    s = services.settings
    return OptionsOut(source_languages=["auto", *sorted(TRANSCRIBE_LANGUAGES)],
                      target_languages=sorted(SYNTHESIS_LANGUAGES),
                      mixing_modes=[m.value for m in MixingMode],
                      upload_kinds={k: list(v) for k, v in UPLOAD_TYPES.items()},
                      max_upload_bytes=s.max_upload_bytes, max_duration_s=s.max_duration_s)


@router.get("/balance", response_model=Balance)
def balance(db: DbDep, who: PrincipalDep) -> Balance:
    """Credit minutes left (reserved minutes are already deducted)."""
    return Balance(balance_minutes=accounts.balance(db, who.tenant_id))
