"""Subtitles and scripts: SRT / WebVTT / JSON segments in and out, and TSV glossaries
(stdlib only).

Segments are ``{start_ms, end_ms, text, speaker_id}`` dicts, as everywhere in the service.
Parsing is strict enough to give a readable `InvalidScriptError` for a file that is not
what it claims to be."""

from __future__ import annotations

import json
import re
from typing import Any

from dubcore.errors import InvalidScriptError

NO_SPEAKER = "SPEAKER_00"
"""What a cue without a speaker (no WebVTT voice tag) is attributed to."""

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})")
_CUE = re.compile(rf"^\s*({_TIME.pattern})\s*-->\s*({_TIME.pattern})")
_VOICE = re.compile(r"^<v(?:\.[^ >]*)?\s+([^>]+)>")
_TAG = re.compile(r"<[^>]+>")


def _ms(text: str) -> int:
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise InvalidScriptError(f"{text!r} is not a subtitle time")
    h, mi, s, frac = m.groups()
    return ((int(h or 0) * 60 + int(mi)) * 60 + int(s)) * 1000 + int(frac.ljust(3, "0"))


def parse(content: str, content_type: str = "") -> list[dict[str, Any]]:
    """SRT, WebVTT or JSON (a list of segments, or ``{"segments": [...]}``) -> segments."""
    stripped = content.lstrip("\ufeff").strip()
    if content_type == "application/json" or stripped.startswith(("[", "{")):
        return _parse_json(stripped)
    segments = []
    for block in re.split(r"\n\s*\n", stripped.replace("\r\n", "\n")):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        at = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if at is None:
            continue  # WEBVTT header, NOTE, STYLE, or an SRT index on its own
        m = _CUE.match(lines[at])
        if m is None:
            raise InvalidScriptError(f"unreadable cue timing: {lines[at]!r}")
        start, end = _ms(m.group(1)), _ms(m.group(6))
        text = " ".join(lines[at + 1:]).strip()
        speaker = NO_SPEAKER
        voice = _VOICE.match(text)
        if voice:
            speaker = voice.group(1).strip()
        text = _TAG.sub("", text).strip()
        if text and end > start:
            segments.append({"start_ms": start, "end_ms": end, "text": text,
                             "speaker_id": speaker})
    if not segments:
        raise InvalidScriptError("the transcript has no cues (expected SRT, WebVTT or JSON)")
    return sorted(segments, key=lambda s: s["start_ms"])


def _parse_json(content: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise InvalidScriptError(f"the transcript is not valid JSON: {e}") from e
    items = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InvalidScriptError("a JSON transcript is a non-empty list of segments")
    out: list[dict[str, Any]] = []
    for i, s in enumerate(items):
        try:
            start, end, text = int(s["start_ms"]), int(s["end_ms"]), str(s["text"]).strip()
            speaker = str(s.get("speaker_id", NO_SPEAKER))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidScriptError(f"segment {i}: needs start_ms, end_ms and text") from e
        if text and end > start:
            out.append({"start_ms": start, "end_ms": end, "text": text, "speaker_id": speaker})
    return sorted(out, key=lambda s: s["start_ms"])


def _stamp(ms: int, sep: str) -> str:
    h, rest = divmod(max(0, ms), 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{frac:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    return "\n".join(f"{i}\n{_stamp(s['start_ms'], ',')} --> {_stamp(s['end_ms'], ',')}\n"
                     f"{s['text']}\n" for i, s in enumerate(segments, 1))


def to_vtt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{_stamp(s['start_ms'], '.')} --> {_stamp(s['end_ms'], '.')}\n"
            f"<v {s['speaker_id']}>{s['text']}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def parse_glossary(content: str) -> list[tuple[str, str]]:
    """A TSV glossary: ``source term<TAB>target term`` per line (a header line naming the
    columns, blank lines and ``#`` comments are skipped)."""
    terms: list[tuple[str, str]] = []
    for n, line in enumerate(content.lstrip("\ufeff").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        if len(cols) < 2 or not cols[0] or not cols[1]:
            raise InvalidScriptError(f"glossary line {n}: expected 'source<TAB>target'")
        if n == 1 and cols[0].lower() in ("source", "term", "source_term"):
            continue
        terms.append((cols[0], cols[1]))
    if not terms:
        raise InvalidScriptError("the glossary has no terms")
    return terms


SUBTITLE_TYPES = ("application/x-subrip", "text/vtt")


def decode_text(raw: bytes, what: str) -> str:
    """An uploaded side file as text (UTF-8, with or without a byte-order mark)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidScriptError(f"the {what} is not UTF-8 text") from e


def parse_target_script(raw: bytes, content_type: str = "") -> list[dict[str, Any]]:
    """A bring-your-own target script: JSON segments, a list (or ``{"segments": [...]}``)
    of ``{start_ms, end_ms, text[, speaker_id]}``. Subtitles are refused with a message
    that says so (a target script replaces the translation line for line, so its lines
    need the timing and, where given, the speaker of each one). Segments come back sorted
    by start, ``speaker_id`` None where the script names none."""
    content = decode_text(raw, "target script").strip()
    if content_type in SUBTITLE_TYPES or (not content.startswith(("[", "{"))
                                          and "-->" in content):
        raise InvalidScriptError(
            "the target script is subtitles (SRT / WebVTT); a target script is JSON: a "
            "list of {start_ms, end_ms, text, speaker_id} segments. Convert it, or send "
            "subtitles of the source speech as transcript_upload_id")
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise InvalidScriptError(f"the target script is not valid JSON ({e}); it is a list "
                                 "of {start_ms, end_ms, text, speaker_id} segments") from e
    items = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise InvalidScriptError("the target script must be a non-empty JSON list of segments")
    out: list[dict[str, Any]] = []
    for i, seg in enumerate(items):
        if not isinstance(seg, dict):
            raise InvalidScriptError(f"segment {i} of the target script is not an object")
        try:
            start, end = int(seg["start_ms"]), int(seg["end_ms"])
            text = str(seg["text"]).strip()
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidScriptError(
                f"segment {i} of the target script needs start_ms, end_ms and text") from e
        if start < 0 or end <= start:
            raise InvalidScriptError(f"segment {i} of the target script ends before it starts")
        if not text:
            raise InvalidScriptError(f"segment {i} of the target script has no text")
        speaker = seg.get("speaker_id")
        out.append({"start_ms": start, "end_ms": end, "text": text,
                    "speaker_id": str(speaker) if speaker else None})
    return sorted(out, key=lambda s: s["start_ms"])
