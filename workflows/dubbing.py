"""`DubbingWorkflow`: one dubbing job for one target language, one activity per stage.

The workflow only orchestrates: order, timeouts, retry policies, status. Every activity
takes and returns a dataclass from ``dubcore.contracts`` holding object keys, never media.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from dubcore.contracts import (
        ACTIVITY_NAMES,
        STAGE_WEIGHTS,
        STAGES,
        DiarizeInput,
        DiarizeResult,
        DubbingRequest,
        DubbingResult,
        JobState,
        JobStatus,
        LipSyncInput,
        LipSyncResult,
        MixInput,
        MixResult,
        ProbeInput,
        ProbeResult,
        SeparateInput,
        SeparateResult,
        Stage,
        StageTiming,
        SynthesizeInput,
        SynthesizeResult,
        TranscribeInput,
        TranscribeResult,
        TranslateInput,
        TranslateResult,
    )
    from dubcore.errors import NON_RETRYABLE_ERROR_TYPES

R = TypeVar("R")

SA_STATUS = SearchAttributeKey.for_keyword("JobStatus")
SA_STAGE = SearchAttributeKey.for_keyword("JobStage")
SA_SOURCE_LANGUAGE = SearchAttributeKey.for_keyword("SourceLanguage")
SA_TARGET_LANGUAGE = SearchAttributeKey.for_keyword("TargetLanguage")
SA_DURATION = SearchAttributeKey.for_float("DurationSeconds")
SA_TENANT = SearchAttributeKey.for_keyword("Tenant")

#: Per-stage time budget: a fixed part plus a multiple of the media's duration (CPU pace,
#: with margin), and how long the activity may go without a heartbeat.
_BUDGET: dict[Stage, tuple[timedelta, float, timedelta]] = {
    Stage.PROBE: (timedelta(minutes=5), 0.5, timedelta(minutes=2)),
    Stage.SEPARATE: (timedelta(minutes=5), 2.0, timedelta(minutes=2)),
    Stage.DIARIZE: (timedelta(minutes=5), 2.0, timedelta(minutes=2)),
    Stage.TRANSCRIBE: (timedelta(minutes=10), 4.0, timedelta(minutes=2)),
    Stage.TRANSLATE: (timedelta(minutes=5), 1.0, timedelta(minutes=2)),
    Stage.SYNTHESIZE: (timedelta(minutes=10), 4.0, timedelta(minutes=2)),
    Stage.LIPSYNC: (timedelta(minutes=10), 10.0, timedelta(minutes=2)),
    Stage.MIX: (timedelta(minutes=5), 2.0, timedelta(minutes=2)),
}

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)


@workflow.defn
class DubbingWorkflow:
    def __init__(self) -> None:
        self._status: JobStatus | None = None
        self._duration_s = 0.0

    @workflow.query
    def status(self) -> JobStatus:
        if self._status is None:
            raise ApplicationError("the job has not started yet")
        return self._status

    @workflow.run
    async def run(self, req: DubbingRequest) -> DubbingResult:
        self._status = JobStatus(job_id=req.job_id, target_language=req.target_language,
                                 state=JobState.RUNNING)
        self._upsert(SA_STATUS.value_set(JobState.RUNNING.value),
                     SA_TARGET_LANGUAGE.value_set(req.target_language),
                     SA_SOURCE_LANGUAGE.value_set(req.source_language),
                     SA_TENANT.value_set(req.tenant))
        try:
            result = await self._pipeline(req)
        except ActivityError as e:
            cause = e.cause
            error_type = cause.type if isinstance(cause, ApplicationError) else None
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or e)
            self._finish(JobState.FAILED, error_type=error_type or "EngineError",
                         message=message)
            raise ApplicationError(f"{self._status.stage} failed: {message}",
                                   type=error_type or "EngineError", non_retryable=True) from e
        except (asyncio.CancelledError, CancelledError):
            self._finish(JobState.CANCELLED)
            raise
        self._status.result = result
        self._finish(JobState.COMPLETED)
        return result

    async def _pipeline(self, req: DubbingRequest) -> DubbingResult:
        p = req.prefix
        probe = await self._stage(req, Stage.PROBE, ProbeInput(req.job_id, req.source_key, p),
                                  ProbeResult)
        self._duration_s = probe.duration_ms / 1000
        assert self._status is not None
        self._status.duration_ms = probe.duration_ms
        self._upsert(SA_DURATION.value_set(self._duration_s))

        sep = await self._stage(req, Stage.SEPARATE,
                                SeparateInput(req.job_id, probe.audio_key, p), SeparateResult)
        speech_key = sep.speech_key or probe.speech_audio_key
        turns = await self._stage(
            req, Stage.DIARIZE,
            DiarizeInput(req.job_id, speech_key, p, req.num_speakers), DiarizeResult)
        transcript = await self._stage(
            req, Stage.TRANSCRIBE,
            TranscribeInput(req.job_id, speech_key, turns.turns_key, p,
                            req.source_language),
            TranscribeResult)
        self._status.source_language = transcript.language
        self._upsert(SA_SOURCE_LANGUAGE.value_set(transcript.language))
        script = await self._stage(
            req, Stage.TRANSLATE,
            TranslateInput(req.job_id, transcript.transcript_key, transcript.language,
                           req.target_language, p, req.target_script_key),
            TranslateResult)
        speech = await self._stage(
            req, Stage.SYNTHESIZE,
            SynthesizeInput(req.job_id, script.script_key, speech_key,
                            req.target_language, probe.duration_ms, p, req.timing),
            SynthesizeResult)
        lips = await self._stage(
            req, Stage.LIPSYNC,
            LipSyncInput(req.job_id, req.source_key, speech.dub_key, p, req.lipsync),
            LipSyncResult)
        mixed = await self._stage(
            req, Stage.MIX,
            MixInput(req.job_id, req.source_key, speech.dub_key, probe.audio_key,
                     sep.background_key, req.mixing_mode, p, lips.video_key),
            MixResult)
        return DubbingResult(
            job_id=req.job_id, target_language=req.target_language,
            output_key=mixed.output_key, dub_key=speech.dub_key,
            background_key=sep.background_key, transcript_key=transcript.transcript_key,
            script_key=script.script_key, fits_key=speech.fits_key,
            speakers_key=speech.speakers_key, source_language=transcript.language,
            duration_ms=mixed.duration_ms, lipsync=lips, loudness_lufs=mixed.loudness_lufs)

    async def _stage(self, req: DubbingRequest, stage: Stage, arg: Any,
                     result_type: type[R]) -> R:
        assert self._status is not None
        self._status.stage = stage.value
        self._upsert(SA_STAGE.value_set(stage.value))
        fixed, per_media_second, heartbeat = _BUDGET[stage]
        budget = fixed + timedelta(seconds=per_media_second * self._duration_s)
        started = workflow.now()
        handle = workflow.start_activity(
            ACTIVITY_NAMES[stage], arg,
            task_queue=req.task_queues.get(stage.value),
            result_type=result_type,
            start_to_close_timeout=budget,
            heartbeat_timeout=heartbeat,
            retry_policy=RETRY,
        )
        try:
            result = await handle
        except ActivityError:
            self._status.failed_stage = stage.value
            self._record(stage, started, failed=True)
            raise
        self._record(stage, started)
        done = sum(STAGE_WEIGHTS[s] for s in STAGES[: STAGES.index(stage) + 1])
        self._status.percent = round(100 * done / sum(STAGE_WEIGHTS.values()))
        return result

    def _record(self, stage: Stage, started: Any, failed: bool = False) -> None:
        assert self._status is not None
        elapsed = workflow.now() - started
        self._status.timings.append(StageTiming(
            stage=stage.value + (" (failed)" if failed else ""),
            started_at=started.isoformat(),
            duration_ms=int(elapsed.total_seconds() * 1000)))

    def _finish(self, state: JobState, error_type: str | None = None,
                message: str | None = None) -> None:
        assert self._status is not None
        self._status.state = state
        self._status.error_type = error_type
        self._status.error_message = message
        if state is JobState.COMPLETED:
            self._status.percent = 100
            self._status.stage = None
        self._upsert(SA_STATUS.value_set(state.value))

    def _upsert(self, *updates: SearchAttributeUpdate[Any]) -> None:
        workflow.upsert_search_attributes(list(updates))
