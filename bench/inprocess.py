"""Run the pipeline's stages in one process, without Temporal: the baseline the benchmark
compares orchestration against (same activity code, same engines, same storage)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dubcore.contracts import (
    DiarizeInput,
    JobRequest,
    LipSyncInput,
    MixInput,
    ProbeInput,
    SeparateInput,
    SynthesizeInput,
    TranscribeInput,
    TranslateInput,
)
from dubcore.settings import Settings
from dubcore.storage import ObjectStore


@dataclass
class StageClock:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn: Any, arg: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(arg)
        self.seconds[name] = time.perf_counter() - t0
        return out


def load_activities(store: ObjectStore, settings: Settings) -> dict[str, object]:
    from activities.diarize import DiarizeActivities
    from activities.lipsync import LipSyncActivities
    from activities.media import MediaActivities
    from activities.separate import SeparateActivities
    from activities.synthesize import SynthesizeActivities
    from activities.transcribe import TranscribeActivities
    from activities.translate import TranslateActivities

    return {"media": MediaActivities(store, settings),
            "separate": SeparateActivities(store, settings),
            "diarize": DiarizeActivities(store, settings),
            "transcribe": TranscribeActivities(store, settings),
            "translate": TranslateActivities(store, settings),
            "synthesize": SynthesizeActivities(store, settings),
            "lipsync": LipSyncActivities(store, settings)}


def run_pipeline(acts: dict[str, object], req: JobRequest) -> tuple[object, StageClock]:
    a = acts
    c = StageClock()
    p, lang = req.prefix, req.target_languages[0]
    p_lang = f"jobs/{req.job_id}/{lang}"
    probe = c.run("probe", a["media"].probe_media,  # type: ignore[attr-defined]
                  ProbeInput(req.job_id, req.source_key, p))
    sep = c.run("separate", a["separate"].separate_audio,  # type: ignore[attr-defined]
                SeparateInput(req.job_id, probe.audio_key, p))
    speech = sep.speech_key or probe.speech_audio_key
    turns = c.run("diarize", a["diarize"].diarize_speakers,  # type: ignore[attr-defined]
                  DiarizeInput(req.job_id, speech, p, req.num_speakers))
    tr = c.run("transcribe", a["transcribe"].transcribe_speech,  # type: ignore[attr-defined]
               TranscribeInput(req.job_id, speech, turns.turns_key, p, req.source_language))
    script = c.run("translate", a["translate"].translate_script,  # type: ignore[attr-defined]
                   TranslateInput(req.job_id, tr.transcript_key, tr.language, lang, p_lang,
                                  req.target_script_keys.get(lang)))
    syn = c.run("synthesize", a["synthesize"].synthesize_speech,  # type: ignore[attr-defined]
                SynthesizeInput(req.job_id, script.script_key, speech, lang,
                                probe.duration_ms, p_lang, req.timing))
    lips = c.run("lipsync", a["lipsync"].lipsync_video,  # type: ignore[attr-defined]
                 LipSyncInput(req.job_id, req.source_key, syn.dub_key, p_lang, req.lipsync))
    mixed = c.run("mix", a["media"].mix_and_remux,  # type: ignore[attr-defined]
                  MixInput(req.job_id, req.source_key, syn.dub_key, probe.audio_key,
                           sep.background_key, req.mixing_mode, p_lang, lips.video_key))
    return mixed, c
