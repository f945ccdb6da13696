"""Export stage: a finished version in another format (audio, stems, subtitles, JSON).

Runs where the mix stage runs (PyAV). The result is one object per job, language, version
and format, so asking twice for the same export makes it once."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import SCRIPT_FORMATS, ExportFormat, ExportRequest, ExportResult
from dubcore.errors import InvalidRequestError
from dubcore.storage import get_json
from dubcore.subtitles import to_srt, to_vtt
from engines import audio, media

#: Format -> (content type, file extension).
FILE_TYPES: dict[ExportFormat, tuple[str, str]] = {
    ExportFormat.MP4: ("video/mp4", "mp4"),
    ExportFormat.WAV: ("audio/wav", "wav"),
    ExportFormat.MP3: ("audio/mpeg", "mp3"),
    ExportFormat.FLAC: ("audio/flac", "flac"),
    ExportFormat.DUB_STEM: ("audio/wav", "wav"),
    ExportFormat.BACKGROUND_STEM: ("audio/wav", "wav"),
    ExportFormat.SRT: ("application/x-subrip", "srt"),
    ExportFormat.VTT: ("text/vtt", "vtt"),
    ExportFormat.JSON: ("application/json", "json"),
}


class ExportActivities(StageActivities):
    @activity.defn(name="export_media")
    @stage_activity
    def export_media(self, req: ExportRequest) -> ExportResult:
        content_type, ext = FILE_TYPES[req.format]
        stem = f"{req.job_id}.{req.language}.v{req.version}"
        name = {ExportFormat.DUB_STEM: f"{stem}.dub.wav",
                ExportFormat.BACKGROUND_STEM: f"{stem}.background.wav"}.get(
            req.format, f"{stem}{'.source' if req.script == 'source' else ''}.{ext}")
        key = f"{req.key}.{ext}"
        if req.format in SCRIPT_FORMATS:
            self._store.put_bytes(key, self._script(req).encode(), content_type)
        else:
            self._media(req, key, content_type)
        return ExportResult(key=key, content_type=content_type,
                            size_bytes=self._store.size(key), file_name=name)

    def _media(self, req: ExportRequest, key: str, content_type: str) -> None:
        source = {ExportFormat.MP4: req.output_key, ExportFormat.DUB_STEM: req.dub_key,
                  ExportFormat.BACKGROUND_STEM: req.background_key}.get(req.format,
                                                                        req.audio_key)
        if not source:
            raise InvalidRequestError(f"this version has no {req.format.value} to export")
        with self._store.local_path(source) as src, scratch() as tmp:
            if req.format in (ExportFormat.MP3, ExportFormat.FLAC):
                heartbeat(0.1)
                out = tmp / f"export.{req.format.value}"
                with audio.WavReader(Path(src)) as mixed:
                    media.encode_audio(mixed.blocks(), mixed.rate_hz, out, req.format.value,
                                       channels=mixed.channels)
                self._store.put_file(key, out, content_type)
            else:
                self._store.put_file(key, Path(src), content_type)

    def _script(self, req: ExportRequest) -> str:
        key = req.transcript_key if req.script == "source" else req.script_key
        segments = sorted(get_json(self._store, key), key=lambda s: int(s["start_ms"]))
        plain = [{"index": int(s.get("index", i)), "start_ms": int(s["start_ms"]),
                  "end_ms": int(s["end_ms"]), "text": str(s["text"]),
                  "speaker_id": str(s["speaker_id"])} for i, s in enumerate(segments)]
        if req.format is ExportFormat.SRT:
            return to_srt(plain)
        if req.format is ExportFormat.VTT:
            return to_vtt(plain)
        speakers = get_json(self._store, req.speakers_key) if req.speakers_key else []
        return json.dumps({"job_id": req.job_id, "language": req.language,
                           "version": req.version, "script": req.script,
                           "segments": plain, "speakers": speakers},
                          ensure_ascii=False, indent=2)
