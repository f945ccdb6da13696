"""Lip-sync stage: re-time the mouths to the dub, or record why it was skipped."""

from __future__ import annotations

from functools import cached_property

from temporalio import activity

from activities._base import StageActivities, scratch, stage_activity
from dubcore.contracts import LipSyncInput, LipSyncResult
from engines.lipsync import LipSyncEngine, NoLipSync


class LipSyncActivities(StageActivities):
    @cached_property
    def _engine(self) -> LipSyncEngine:
        return NoLipSync("no lip-sync engine is configured on this deployment "
                         "(DUB_LIPSYNC_ENGINE=none); the original video is kept")

    @activity.defn(name="lipsync_video")
    @stage_activity
    def lipsync_video(self, inp: LipSyncInput) -> LipSyncResult:
        if not inp.enabled:
            return LipSyncResult(skipped=True, reason="lip-sync was not requested for this job")
        engine = self._engine
        with self._store.local_path(inp.source_key) as video, \
                self._store.local_path(inp.dub_key) as speech, scratch() as tmp:
            outcome = engine.sync(video, speech, tmp / "lipsync.mp4")
            if outcome.skipped or outcome.video_path is None:
                return LipSyncResult(skipped=True, reason=outcome.reason, engine=engine.name)
            key = f"{inp.prefix}/lipsync.mp4"
            self._store.put_file(key, outcome.video_path, "video/mp4")
        return LipSyncResult(skipped=False, video_key=key, engine=engine.name)
