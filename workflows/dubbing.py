"""`DubbingWorkflow`: one target language of a job, as a child of `DubbingJobWorkflow`.

It runs the language stages (translate, synthesize, lip-sync, mix) on the job's shared
artifacts, then settles that language's credits (or refunds them when it fails or is
cancelled). It only orchestrates: every activity takes and returns a dataclass from
``dubcore.contracts`` holding object keys, never media.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from dubcore.contracts import (
        APPROVE_UPDATE,
        LANGUAGE_STAGES,
        SETTLE_ACTIVITY,
        STAGE_WEIGHTS,
        ApproveRequest,
        DubbingRequest,
        DubbingResult,
        JobState,
        JobStatus,
        LipSyncInput,
        LipSyncResult,
        MixingMode,
        MixInput,
        MixResult,
        ProbeInput,
        ProbeResult,
        SettleInput,
        SettleResult,
        Stage,
        SynthesizeInput,
        SynthesizeResult,
        TranslateInput,
        TranslateResult,
        language_workflow_id,
    )

from workflows.stages import (
    ACCOUNT_RETRY,
    SA_DURATION,
    SA_SOURCE_LANGUAGE,
    SA_STATUS,
    SA_TARGET_LANGUAGE,
    SA_TENANT,
    StatusPublisher,
    failure_of,
    run_stage,
    upsert,
)

R = TypeVar("R")


@workflow.defn
class DubbingWorkflow:
    def __init__(self) -> None:
        self._status: JobStatus | None = None
        self._approved: ApproveRequest | None = None
        self._publisher: StatusPublisher | None = None

    @workflow.query
    def status(self) -> JobStatus:
        if self._status is None:
            raise ApplicationError("the job has not started yet")
        return self._status

    @workflow.update(name=APPROVE_UPDATE)
    async def approve(self, req: ApproveRequest) -> JobStatus:
        """Continue after review, with the target script as it is or as edited."""
        self._approved = req
        assert self._status is not None
        await workflow.wait_condition(
            lambda: self._status is None or self._status.state is not JobState.AWAITING_REVIEW)
        return self._status

    @approve.validator
    def _check_approve(self, req: ApproveRequest) -> None:
        st = self._status
        if st is None or st.state is not JobState.AWAITING_REVIEW or self._approved:
            state = st.state.value if st else "queued"
            raise ApplicationError(
                f"{st.target_language if st else 'this language'} is not awaiting review "
                f"(it is {state})", type="ConflictError", non_retryable=True)
        if req.changed_segments and not req.script_key:
            raise ApplicationError("changed segments were named without an edited script",
                                   type="ConflictError", non_retryable=True)

    @workflow.run
    async def run(self, req: DubbingRequest) -> DubbingResult:
        shared = req.shared
        self._publisher = StatusPublisher(language_workflow_id(req.job_id, req.target_language),
                                          req.job_id, req.target_language)
        st = self._status = JobStatus(
            job_id=req.job_id, target_language=req.target_language, state=JobState.RUNNING,
            source_language=shared.transcript.language,
            duration_ms=shared.probe.duration_ms)
        upsert(SA_STATUS.value_set(JobState.RUNNING.value),
               SA_TARGET_LANGUAGE.value_set(req.target_language),
               SA_SOURCE_LANGUAGE.value_set(shared.transcript.language),
               SA_DURATION.value_set(shared.probe.duration_ms / 1000),
               SA_TENANT.value_set(req.tenant))
        await self._publish()
        try:
            result = await self._pipeline(req)
        except ActivityError as e:
            failure = failure_of(e)
            st.state, st.error_type, st.error_message = (
                JobState.FAILED, failure.error_type, failure.message)
            upsert(SA_STATUS.value_set(JobState.FAILED.value))
            await self._settle(req, delivered=False)
            await self._publish()  # after the refund: a reader sees an ended, settled job
            raise ApplicationError(f"{st.stage} failed: {failure.message}",
                                   type=failure.error_type, non_retryable=True) from e
        except (asyncio.CancelledError, CancelledError):
            st.state = JobState.CANCELLED
            upsert(SA_STATUS.value_set(JobState.CANCELLED.value))
            await self._settle(req, delivered=False)
            await self._publish()  # after the refund: a reader sees an ended, settled job
            raise
        await self._settle(req, delivered=True)
        st.result, st.state, st.stage, st.percent = result, JobState.COMPLETED, None, 100
        upsert(SA_STATUS.value_set(JobState.COMPLETED.value))
        await self._publish()
        return result

    async def _pipeline(self, req: DubbingRequest) -> DubbingResult:
        if req.dub_audio_key:
            return await self._own_track(req)
        p, shared = req.prefix, req.shared
        script = await self._stage(
            req, Stage.TRANSLATE,
            TranslateInput(req.job_id, shared.transcript.transcript_key,
                           shared.transcript.language, req.target_language, p,
                           req.target_script_key, req.glossary_key),
            TranslateResult)
        script_key = script.script_key
        assert self._status is not None
        self._status.script_key = script_key
        if req.pause_for_review:
            script_key = await self._review(script_key)
        speech = await self._stage(
            req, Stage.SYNTHESIZE,
            SynthesizeInput(req.job_id, script_key, shared.speech_key,
                            req.target_language, shared.probe.duration_ms, p, req.timing,
                            voices=req.voices),
            SynthesizeResult)
        lips = await self._stage(
            req, Stage.LIPSYNC,
            LipSyncInput(req.job_id, req.source_key, speech.dub_key, p, req.lipsync),
            LipSyncResult)
        mixed = await self._stage(
            req, Stage.MIX,
            MixInput(req.job_id, req.source_key, speech.dub_key, shared.probe.audio_key,
                     shared.separate.background_key, req.mixing_mode, p, lips.video_key),
            MixResult)
        return DubbingResult(
            job_id=req.job_id, target_language=req.target_language,
            output_key=mixed.output_key, dub_key=speech.dub_key,
            background_key=shared.separate.background_key,
            transcript_key=shared.transcript.transcript_key,
            script_key=script_key, fits_key=speech.fits_key,
            speakers_key=speech.speakers_key, source_language=shared.transcript.language,
            duration_ms=mixed.duration_ms, lipsync=lips, loudness_lufs=mixed.loudness_lufs,
            gain_db=mixed.gain_db, mixing_mode=req.mixing_mode, audio_key=mixed.audio_key)

    async def _own_track(self, req: DubbingRequest) -> DubbingResult:
        """The user's dubbed track over the source: decode it (the probe stage), lip-sync,
        mix it alone (voiceover_only)."""
        assert req.dub_audio_key is not None
        p, shared = req.prefix, req.shared
        track = await self._stage(req, Stage.PROBE,
                                  ProbeInput(req.job_id, req.dub_audio_key, f"{p}/track"),
                                  ProbeResult)
        lips = await self._stage(
            req, Stage.LIPSYNC,
            LipSyncInput(req.job_id, req.source_key, track.audio_key, p, req.lipsync),
            LipSyncResult)
        mixed = await self._stage(
            req, Stage.MIX,
            MixInput(req.job_id, req.source_key, track.audio_key, shared.probe.audio_key,
                     shared.separate.background_key, MixingMode.VOICEOVER_ONLY, p,
                     lips.video_key),
            MixResult)
        return DubbingResult(
            job_id=req.job_id, target_language=req.target_language,
            output_key=mixed.output_key, dub_key=track.audio_key,
            background_key=shared.separate.background_key, transcript_key="",
            script_key="", fits_key="", speakers_key="",
            source_language=shared.transcript.language, duration_ms=mixed.duration_ms,
            lipsync=lips, loudness_lufs=mixed.loudness_lufs, gain_db=mixed.gain_db,
            mixing_mode=MixingMode.VOICEOVER_ONLY, audio_key=mixed.audio_key)

    async def _review(self, script_key: str) -> str:
        """Wait (durably, for as long as it takes) until the script is approved."""
        st = self._status
        assert st is not None
        st.state, st.stage = JobState.AWAITING_REVIEW, None
        upsert(SA_STATUS.value_set(JobState.AWAITING_REVIEW.value))
        await self._publish()
        await workflow.wait_condition(lambda: self._approved is not None)
        assert self._approved is not None
        st.state = JobState.RUNNING
        upsert(SA_STATUS.value_set(JobState.RUNNING.value))
        if self._approved.script_key:
            st.script_key = script_key = self._approved.script_key
        return script_key

    async def _stage(self, req: DubbingRequest, stage: Stage, arg: object,
                     result_type: type[R]) -> R:
        assert self._status is not None
        return await run_stage(self._status, req.task_queues, stage, arg, result_type,
                               req.shared.probe.duration_ms / 1000, self._publish)

    async def _publish(self) -> None:
        """Publish the status, with the share of the language stages finished so far."""
        st, publisher = self._status, self._publisher
        assert st is not None and publisher is not None
        if st.state is not JobState.COMPLETED:
            done = {t.stage for t in st.timings}
            st.percent = round(100 * sum(STAGE_WEIGHTS[s] for s in LANGUAGE_STAGES
                                         if s.value in done)
                               / sum(STAGE_WEIGHTS[s] for s in LANGUAGE_STAGES))
        await publisher.publish(language_status=st)

    async def _settle(self, req: DubbingRequest, delivered: bool) -> None:
        await workflow.execute_activity(
            SETTLE_ACTIVITY,
            SettleInput(req.job_id, delivered=[req.target_language] if delivered else [],
                        languages=[req.target_language]),
            result_type=SettleResult, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=ACCOUNT_RETRY)
