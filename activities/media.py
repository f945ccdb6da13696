"""Probe and extract (first stage) and mix and remux (last stage), both on PyAV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import MixingMode, MixInput, MixResult, ProbeInput, ProbeResult
from dubcore.errors import EngineError, InvalidRequestError, MediaTooLongError
from engines import audio, media
from engines.mix import duck_levels, mix_block

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
            self._extract(src, info.duration_ms, tmp / "audio.wav", tmp / "speech16k.wav")
            audio_key, speech_key = f"{inp.prefix}/audio.wav", f"{inp.prefix}/speech16k.wav"
            self._store.put_file(audio_key, tmp / "audio.wav", "audio/wav")
            self._store.put_file(speech_key, tmp / "speech16k.wav", "audio/wav")
        return ProbeResult(duration_ms=info.duration_ms, has_video=info.has_video,
                           audio_key=audio_key, speech_audio_key=speech_key,
                           sample_rate_hz=info.sample_rate_hz, channels=info.channels,
                           video_codec=info.video_codec, width=info.width, height=info.height,
                           fps=info.fps, source_key=clip_key)

    @staticmethod
    def _extract(src: Path, duration_ms: int, master: Path, speech: Path) -> None:
        """The 48 kHz stereo master and the 16 kHz mono speech track, decoded and written
        block by block (an hour of media holds a few seconds of samples in memory)."""
        total = max(1, duration_ms * WORK_RATE_HZ // 1000)
        to_speech = audio.StreamResampler(WORK_RATE_HZ, SPEECH_RATE_HZ)
        with audio.WavWriter(master, WORK_RATE_HZ, 2) as full, \
                audio.WavWriter(speech, SPEECH_RATE_HZ, 1) as mono:
            for block in media.decode_blocks(src, WORK_RATE_HZ, channels=2):
                full.write(block)
                mono.write(to_speech.push(audio.to_mono(block)))
                heartbeat(0.1 + 0.8 * min(1.0, full.frames / total))
            mono.write(to_speech.push(None))

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
        """Streamed: the mix is made block by block twice (once to measure its loudness,
        once to write it at the gain that measure gives), then the master is encoded into
        the MP4 from the file, so memory does not grow with the media's length."""
        with scratch() as tmp, self._store.local_path(inp.dub_key) as dub_path, \
                self._store.local_path(inp.audio_key) as original_path, \
                self._store.local_path(inp.background_key) as background_path, \
                audio.WavReader(dub_path) as dub, audio.WavReader(original_path) as original, \
                audio.WavReader(background_path) as background:
            rate, n = original.rate_hz, original.frames
            if dub.rate_hz != rate or background.rate_hz != rate:
                raise EngineError(
                    f"the dub ({dub.rate_hz} Hz), the original ({rate} Hz) and the background "
                    f"({background.rate_hz} Hz) must share one rate to be mixed")
            def at_length(r: audio.WavReader) -> Iterator[tuple[int, np.ndarray]]:
                """Its blocks over the master's length (a shorter file padded, a longer
                one cut), with where each starts."""
                for start in range(0, n, audio.STREAM_BLOCK):
                    size = min(audio.STREAM_BLOCK, n - start)
                    yield start, audio.fit_length(r.read(start, size), size)

            levels = (duck_levels((audio.to_mono(d) for _, d in at_length(dub)), rate)
                      if inp.mixing_mode is MixingMode.VOICEOVER_WITH_ORIGINAL_TRACK
                      else np.zeros(0, dtype=np.float32))

            def mixed() -> Iterator[np.ndarray]:
                for (start, d), (_, o), (_, b) in zip(at_length(dub), at_length(original),
                                                      at_length(background), strict=True):
                    yield mix_block(inp.mixing_mode, d, o, b, levels, start, rate)

            gain_db, limit = inp.gain_db, True
            if gain_db is None:
                meter = audio.LoudnessMeter(rate, 2)
                for block in mixed():
                    meter.push(block)
                measured = meter.value()
                # Silence stays as it is (no gain to aim at a target, no limiter).
                gain_db, limit = ((self._settings.loudness_target_lufs - measured, True)
                                  if np.isfinite(measured) else (0.0, False))
            heartbeat(0.3)
            # The final audio as a lossless master too: exports and comparisons read it,
            # and the MP4's audio is encoded from it.
            after = audio.LoudnessMeter(rate, 2)
            with audio.WavWriter(tmp / "mix.wav", rate, 2) as master:
                for start, block in zip(range(0, n, audio.STREAM_BLOCK), mixed(),
                                        strict=True):
                    out = audio.gain_and_limit(block, gain_db) if limit else block
                    master.write(out)
                    after.push(out)
                    heartbeat(0.3 + 0.3 * start / max(1, n))
            lufs = after.value()
            audio_key = f"{inp.prefix}/mix.wav"
            self._store.put_file(audio_key, tmp / "mix.wav", "audio/wav")
            out_path = tmp / "dubbed.mp4"
            with self._store.local_path(inp.source_key) as src, \
                    audio.WavReader(tmp / "mix.wav") as final:
                if inp.video_key:
                    with self._store.local_path(inp.video_key) as video:
                        copied = media.mux(src, final.blocks(), rate, out_path,
                                           video_source=video, channels=2)
                else:
                    copied = media.mux(src, final.blocks(), rate, out_path, channels=2)
            heartbeat(0.9)
            duration_ms = media.probe(out_path).duration_ms
            key = f"{inp.prefix}/dubbed.mp4"
            self._store.put_file(key, out_path, "video/mp4")
        return MixResult(output_key=key, duration_ms=duration_ms, loudness_lufs=round(lufs, 2),
                         video_copied=copied, gain_db=float(gain_db), audio_key=audio_key)
