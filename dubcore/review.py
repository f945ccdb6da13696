"""Review edits, checked and diffed before they reach a workflow (no Temporal, no HTTP).

A reviewer sends segments by index with the fields to change; `apply_edits` checks them
against the version being revised and returns the whole edited script and which segments
changed. The edited script is stored under a content-addressed key, so a retried request
names the same object.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dubcore.errors import InvalidScriptError
from dubcore.languages import CLONE

MAX_SEGMENT_CHARS = 2000
EDITABLE = ("text", "speaker_id", "start_ms", "end_ms")


def segments(script: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored script or transcript as the public segments (sorted by start)."""
    return [{"index": int(s.get("index", i)), "start_ms": int(s["start_ms"]),
             "end_ms": int(s["end_ms"]), "text": str(s["text"]),
             "speaker_id": str(s["speaker_id"])}
            for i, s in enumerate(sorted(script, key=lambda s: int(s["start_ms"])))]


def apply_edits(script: list[dict[str, Any]], edits: list[dict[str, Any]],
                speaker_ids: set[str], duration_ms: int
                ) -> tuple[list[dict[str, Any]], list[int]]:
    """The script with ``edits`` applied (each ``{index, <fields to change>}``), and the
    indexes of the segments that really changed. Raises `InvalidScriptError` for an unknown
    index, a duplicate, an empty or over-long text, an unknown speaker or a bad time span."""
    by_index = {int(s.get("index", i)): dict(s) for i, s in enumerate(script)}
    seen: set[int] = set()
    changed: list[int] = []
    for edit in edits:
        idx = int(edit["index"])
        if idx not in by_index:
            raise InvalidScriptError(f"segment {idx} does not exist (the script has "
                                     f"indexes {min(by_index)}..{max(by_index)})")
        if idx in seen:
            raise InvalidScriptError(f"segment {idx} is edited twice")
        seen.add(idx)
        seg, before = by_index[idx], dict(by_index[idx])
        for name in EDITABLE:
            if edit.get(name) is not None:
                seg[name] = edit[name]
        seg["text"] = str(seg["text"]).strip()
        if not seg["text"]:
            raise InvalidScriptError(f"segment {idx}: the text is empty")
        if len(seg["text"]) > MAX_SEGMENT_CHARS:
            raise InvalidScriptError(f"segment {idx}: the text is longer than "
                                     f"{MAX_SEGMENT_CHARS} characters")
        if seg["speaker_id"] not in speaker_ids:
            raise InvalidScriptError(f"segment {idx}: speaker {seg['speaker_id']!r} is not "
                                     f"one of this job's ({', '.join(sorted(speaker_ids))})")
        start, end = int(seg["start_ms"]), int(seg["end_ms"])
        if not 0 <= start < end <= duration_ms:
            raise InvalidScriptError(f"segment {idx}: {start}..{end} ms is not a time span "
                                     f"inside the media (0..{duration_ms} ms)")
        if any(seg[k] != before[k] for k in EDITABLE):
            changed.append(idx)
    edited = sorted(by_index.values(), key=lambda s: int(s["start_ms"]))
    return edited, sorted(changed)


def voice_changes(speakers: list[dict[str, Any]], wanted: dict[str, str], language: str,
                  catalog: set[str]) -> dict[str, str]:
    """The speakers whose voice really changes, checked against the voice keys of the
    configured speech engines (``registry.catalog(settings).voice_keys(language)``)."""
    current = {s["speaker_id"]: s["voice_key"] for s in speakers}
    out: dict[str, str] = {}
    for speaker, voice in wanted.items():
        if speaker not in current:
            raise InvalidScriptError(f"speaker {speaker!r} is not one of this job's "
                                     f"({', '.join(sorted(current))})")
        if voice != CLONE and voice not in catalog:
            raise InvalidScriptError(f"voice {voice!r} does not speak {language} here; see "
                                     "GET /v1/voices")
        if voice != current[speaker]:
            out[speaker] = voice
    return out


def edit_key(job_id: str, language: str, script: list[dict[str, Any]]) -> str:
    """Where an edited script is stored: named by its content."""
    body = json.dumps(script, sort_keys=True, ensure_ascii=False).encode()
    return f"jobs/{job_id}/{language}/edits/{hashlib.sha256(body).hexdigest()[:20]}.json"
