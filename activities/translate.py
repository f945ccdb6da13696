"""Translate stage: the target script, segment for segment (or the user's own script)."""

from __future__ import annotations

from functools import cached_property

from temporalio import activity

from activities._base import StageActivities, heartbeat, stage_activity
from dubcore.contracts import TranslateInput, TranslateResult
from dubcore.languages import primary
from dubcore.storage import get_json, put_json
from dubcore.subtitles import parse_glossary
from engines.translate import (
    BergamotTranslator,
    Translator,
    mask_terms,
    script_from_user,
    unmask_terms,
)


class TranslateActivities(StageActivities):
    @cached_property
    def engine(self) -> Translator:
        return BergamotTranslator()

    @activity.defn(name="translate_script")
    @stage_activity
    def translate_script(self, inp: TranslateInput) -> TranslateResult:
        source = get_json(self._store, inp.transcript_key)
        key = f"{inp.prefix}/script.json"
        if inp.target_script_key:
            script = script_from_user(get_json(self._store, inp.target_script_key), source)
            engine = "target-script"
        elif primary(inp.source_language) == primary(inp.target_language):
            script = [_target(s, s["text"]) for s in source]
            engine = "identity"
        else:
            texts = [s["text"] for s in source]
            tokens: dict[str, str] = {}
            if inp.glossary_key:
                with self._store.local_path(inp.glossary_key) as path:
                    terms = parse_glossary(path.read_text(encoding="utf-8", errors="replace"))
                texts, tokens = mask_terms(texts, terms)
            texts = unmask_terms(self.engine.translate(texts, inp.source_language,
                                                       inp.target_language, heartbeat), tokens)
            script = [_target(s, t) for s, t in zip(source, texts, strict=True)]
            engine = self.engine.name
        put_json(self._store, key, script)
        return TranslateResult(script_key=key, num_segments=len(script), engine=engine)


def _target(source: dict[str, object], text: str) -> dict[str, object]:
    return {"index": source["index"], "start_ms": source["start_ms"],
            "end_ms": source["end_ms"], "text": text, "speaker_id": source["speaker_id"],
            "source_text": source["text"]}
