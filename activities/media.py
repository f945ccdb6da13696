"""Probe and extract (first stage) and mix and remux (last stage), both on PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import MixInput, MixResult, ProbeInput, ProbeResult
from dubcore.errors import InvalidRequestError, MediaTooLongError
from engines import audio, media
from engines.mix import mix

#: The working rate of the pipeline: separation (DeepFilterNet) and the output run at 48 kHz.
WORK_RATE_HZ = 48_000
#: What the speech models (VAD, embeddings, Whisper) take.
SPEECH_RATE_HZ = 16_000


class MediaActivities(StageActivities):
    @activity.defn(name="probe_media")
    @stage_activity
    def probe_media(self, inp: ProbeInput) -> ProbeResult:
        with self._store.local_path(inp.source_key) as whole, scratch() as tmp:
            src, clip_key = whole, ""
            if inp.start_ms or inp.end_ms is not None:
                src, clip_key = self._cut(inp, whole, tmp)
            info = media.probe(src)
            limit_s = self._settings.max_duration_s
            if info.duration_ms > limit_s * 1000:
                raise MediaTooLongError(
                    f"the media is {info.duration_ms / 1000:.0f} s long; this service accepts "
                    f"at most {limit_s} s")
            heartbeat(0.1)
            full = media.decode_audio(src, WORK_RATE_HZ, channels=2)
            heartbeat(0.6)
            speech = audio.resample(audio.to_mono(full), WORK_RATE_HZ, SPEECH_RATE_HZ)
            audio.write_wav(tmp / "audio.wav", full, WORK_RATE_HZ)
            audio.write_wav(tmp / "speech16k.wav", speech, SPEECH_RATE_HZ)
            audio_key, speech_key = f"{inp.prefix}/audio.wav", f"{inp.prefix}/speech16k.wav"
            self._store.put_file(audio_key, tmp / "audio.wav", "audio/wav")
            self._store.put_file(speech_key, tmp / "speech16k.wav", "audio/wav")
        return ProbeResult(duration_ms=info.duration_ms, has_video=info.has_video,
                           audio_key=audio_key, speech_audio_key=speech_key,
                           sample_rate_hz=info.sample_rate_hz, channels=info.channels,
                           video_codec=info.video_codec, width=info.width, height=info.height,
                           fps=info.fps, source_key=clip_key)

    def _cut(self, inp: ProbeInput, whole: Path, tmp: Path) -> tuple[Path, str]:
        """Cut the time range out of the source: the job dubs (and returns) that part."""
        length = media.probe(whole).duration_ms
        end = length if inp.end_ms is None else min(inp.end_ms, length)
        if not 0 <= inp.start_ms < end:
            raise InvalidRequestError(f"the time range {inp.start_ms}..{inp.end_ms} ms is "
                                      f"not inside the media (0..{length} ms)")
        clip = tmp / "clip.mp4"
        media.cut(whole, clip, inp.start_ms, end)
        heartbeat(0.05)
        key = f"{inp.prefix}/source-clip.mp4"
        self._store.put_file(key, clip, "video/mp4")
        return clip, key

    @activity.defn(name="mix_and_remux")
    @stage_activity
    def mix_and_remux(self, inp: MixInput) -> MixResult:
        with scratch() as tmp:
            dub, rate = self._read(inp.dub_key)
            original, _ = self._read(inp.audio_key)
            background, _ = self._read(inp.background_key)
            n = original.shape[-1]
            dub, background = audio.fit_length(dub, n), audio.fit_length(background, n)
            heartbeat(0.2)
            mixed = mix(inp.mixing_mode, dub, original, background, rate)
            mixed, lufs, gain_db = audio.normalize_loudness(
                mixed, rate, self._settings.loudness_target_lufs, gain_db=inp.gain_db)
            heartbeat(0.4)
            # The final audio as a lossless master too: exports and comparisons read it.
            audio.write_wav(tmp / "mix.wav", mixed, rate)
            audio_key = f"{inp.prefix}/mix.wav"
            self._store.put_file(audio_key, tmp / "mix.wav", "audio/wav")
            out = tmp / "dubbed.mp4"
            with self._store.local_path(inp.source_key) as src:
                if inp.video_key:
                    with self._store.local_path(inp.video_key) as video:
                        copied = media.mux(src, mixed, rate, out, video_source=video)
                else:
                    copied = media.mux(src, mixed, rate, out)
            heartbeat(0.9)
            duration_ms = media.probe(out).duration_ms
            key = f"{inp.prefix}/dubbed.mp4"
            self._store.put_file(key, out, "video/mp4")
        return MixResult(output_key=key, duration_ms=duration_ms, loudness_lufs=round(lufs, 2),
                         video_copied=copied, gain_db=gain_db, audio_key=audio_key)

    def _read(self, key: str) -> tuple[np.ndarray, int]:
        with self._store.local_path(key) as path:
            return audio.read_wav(path)
