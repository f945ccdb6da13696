"""Lip-sync stage: re-time the mouths to the dub, or record why it was skipped."""

from __future__ import annotations

from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import LipSyncInput, LipSyncResult, Stage
from engines.lipsync import LipSyncEngine


class LipSyncActivities(StageActivities):
    stage = Stage.LIPSYNC
    engine: LipSyncEngine

    @activity.defn(name="lipsync_video")
    @stage_activity
    def lipsync_video(self, inp: LipSyncInput) -> LipSyncResult:
        if not inp.enabled:
            return LipSyncResult(skipped=True, reason="lip-sync was not requested for this job")
        engine = self.engine
        with self._store.local_path(inp.source_key) as video, \
                self._store.local_path(inp.dub_key) as speech, scratch() as tmp:
            outcome = engine.sync(video, speech, tmp / "lipsync.mp4", progress=heartbeat)
            if outcome.skipped or outcome.video_path is None:
                return LipSyncResult(skipped=True, reason=outcome.reason, engine=engine.name)
            key = f"{inp.prefix}/lipsync.mp4"
            self._store.put_file(key, outcome.video_path, "video/mp4")
        return LipSyncResult(skipped=False, video_key=key, engine=engine.name,
                             model=self.model, reason=outcome.reason)
