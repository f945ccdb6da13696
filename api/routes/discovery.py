"""Discovery: languages per stage with the engine serving each, voices, options, balance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import PrincipalDep
from api.deps import DbDep, ServicesDep
from api.schemas import (
    UPLOAD_TYPES,
    Balance,
    EngineOut,
    ErrorBody,
    LanguagesOut,
    OptionsOut,
    StageLanguages,
    VoiceOut,
    VoicesOut,
)
from dubcore import accounts, registry
from dubcore.contracts import MixingMode

router = APIRouter(prefix="/v1", tags=["discovery"], responses={
    code: {"model": ErrorBody} for code in (401, 422, 429)})


@router.get("/languages", response_model=LanguagesOut)
def languages(services: ServicesDep, who: PrincipalDep) -> LanguagesOut:
    """Which languages each stage handles on this deployment, and with which engine (from
    the engine registry)."""
    served = registry.catalog(services.settings)
    speech = " + ".join(s.name for s in served.speech)
    return LanguagesOut(stages=[
        StageLanguages(stage="transcribe", engine=served.transcribe.name,
                       languages=served.transcribe_languages()),
        StageLanguages(stage="translate", engine=served.translate.name,
                       languages=sorted({b for _, b in served.translation_pairs()})),
        StageLanguages(stage="synthesize", engine=speech,
                       languages=served.synthesis_languages()),
    ], translation_pairs=served.translation_pairs(), engines=[
        EngineOut(stage=s.stage.value, name=s.name, model=s.model_ref(services.settings),
                  description=s.description, can_clone=s.can_clone)
        for stage in registry.DEFAULTS for s in registry.chosen(services.settings, stage)])


@router.get("/voices", response_model=VoicesOut)
def voices(services: ServicesDep, who: PrincipalDep,
           language: Annotated[str | None, Query(examples=["pt-BR"])] = None) -> VoicesOut:
    """Voices per target language (``voice_key`` is what the speaker table takes)."""
    served = registry.catalog(services.settings)
    tags = [language] if language else served.synthesis_languages()
    return VoicesOut(voices={tag: [VoiceOut(**v.as_dict()) for v in served.voices(tag)]
                             for tag in tags})


@router.get("/options", response_model=OptionsOut)
def options(services: ServicesDep, who: PrincipalDep) -> OptionsOut:
    """Accepted source and target languages, mixing modes and upload types."""
    s = services.settings
    served = registry.catalog(s)
    return OptionsOut(source_languages=["auto", *served.transcribe_languages()],
                      target_languages=served.synthesis_languages(),
                      mixing_modes=[m.value for m in MixingMode],
                      upload_kinds={k: list(v) for k, v in UPLOAD_TYPES.items()},
                      max_upload_bytes=s.max_upload_bytes, max_duration_s=s.max_duration_s)


@router.get("/balance", response_model=Balance)
def balance(db: DbDep, who: PrincipalDep) -> Balance:
    """Credit minutes left (reserved minutes are already deducted)."""
    return Balance(balance_minutes=accounts.balance(db, who.tenant_id))
