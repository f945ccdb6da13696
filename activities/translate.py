"""Translate stage: the target script, segment for segment (or the user's own script)."""

from __future__ import annotations

from temporalio import activity

from activities._base import StageActivities, heartbeat, stage_activity
from dubcore.contracts import Stage, TranslateInput, TranslateResult
from dubcore.languages import primary
from dubcore.storage import get_json, put_json
from dubcore.subtitles import parse_glossary, parse_target_script
from engines.translate import Translator, script_from_user


class TranslateActivities(StageActivities):
    stage = Stage.TRANSLATE
    engine: Translator

    @activity.defn(name="translate_script")
    @stage_activity
    def translate_script(self, inp: TranslateInput) -> TranslateResult:
        source = get_json(self._store, inp.transcript_key)
        key = f"{inp.prefix}/script.json"
        model = ""
        if inp.target_script_key:
            # Checked at the door already; a bad file still fails typed, never retried.
            raw = parse_target_script(self._store.get_bytes(inp.target_script_key))
            script = script_from_user(raw, source)
            engine = "target-script"
        elif primary(inp.source_language) == primary(inp.target_language):
            script = [_target(s, s["text"]) for s in source]
            engine = "identity"
        else:
            texts = [s["text"] for s in source]
            terms: list[tuple[str, str]] = []
            if inp.glossary_key:
                with self._store.local_path(inp.glossary_key) as path:
                    terms = parse_glossary(path.read_text(encoding="utf-8", errors="replace"))
            texts = self.engine.translate(texts, inp.source_language, inp.target_language,
                                          heartbeat, terms=terms)
            script = [_target(s, t) for s, t in zip(source, texts, strict=True)]
            engine, model = self.engine.name, self.model
        put_json(self._store, key, script)
        return TranslateResult(script_key=key, num_segments=len(script), engine=engine,
                               model=model)


def _target(source: dict[str, object], text: str) -> dict[str, object]:
    return {"index": source["index"], "start_ms": source["start_ms"],
            "end_ms": source["end_ms"], "text": text, "speaker_id": source["speaker_id"],
            "source_text": source["text"]}
