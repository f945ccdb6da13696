"""`DubbingJobWorkflow`: one dubbing job. It runs the shared stages once (probe, separate,
diarize, transcribe), then one child `DubbingWorkflow` per target language, each with its
own status and result; when all have ended it refunds what no language used and sends the
signed ``job.*`` webhook."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from dubcore.contracts import (
        SETTLE_ACTIVITY,
        WEBHOOK_ACTIVITY,
        DiarizeInput,
        DiarizeResult,
        DubbingRequest,
        DubbingResult,
        JobProgress,
        JobRequest,
        JobState,
        ProbeInput,
        ProbeResult,
        SeparateInput,
        SeparateResult,
        SettleInput,
        SettleResult,
        SharedArtifacts,
        Stage,
        TranscribeInput,
        TranscribeResult,
        WebhookInput,
        WebhookResult,
        language_workflow_id,
    )

from workflows.dubbing import DubbingWorkflow
from workflows.stages import (
    ACCOUNT_RETRY,
    SA_DURATION,
    SA_SOURCE_LANGUAGE,
    SA_STATUS,
    SA_TARGET_LANGUAGE,
    SA_TENANT,
    failure_of,
    run_stage,
    upsert,
)


@workflow.defn
class DubbingJobWorkflow:
    def __init__(self) -> None:
        self._progress: JobProgress | None = None
        self._results: dict[str, DubbingResult] = {}
        self._errors: dict[str, tuple[str, str]] = {}

    @workflow.query
    def status(self) -> JobProgress:
        if self._progress is None:
            raise ApplicationError("the job has not started yet")
        return self._progress

    @workflow.run
    async def run(self, req: JobRequest) -> JobProgress:
        pr = self._progress = JobProgress(
            job_id=req.job_id, target_languages=list(req.target_languages),
            state=JobState.RUNNING,
            languages={lang: JobState.QUEUED.value for lang in req.target_languages})
        upsert(SA_STATUS.value_set(JobState.RUNNING.value),
               SA_TARGET_LANGUAGE.value_set(",".join(req.target_languages)),
               SA_SOURCE_LANGUAGE.value_set(req.source_language),
               SA_TENANT.value_set(req.tenant))
        try:
            shared = await self._shared(req)
            await asyncio.gather(*(self._language(req, lang, shared)
                                   for lang in req.target_languages))
        except ActivityError as e:
            failure = failure_of(e)
            pr.error_type, pr.error_message = failure.error_type, failure.message
            pr.languages = {lang: JobState.FAILED.value for lang in pr.languages}
            await self._end(req, JobState.FAILED)
            raise ApplicationError(f"{pr.stage} failed: {failure.message}",
                                   type=failure.error_type, non_retryable=True) from e
        except (asyncio.CancelledError, CancelledError):
            pr.languages = {lang: (state if state == JobState.COMPLETED.value
                                   else JobState.CANCELLED.value)
                            for lang, state in pr.languages.items()}
            await self._end(req, JobState.CANCELLED)
            raise
        delivered = [lang for lang, s in pr.languages.items() if s == JobState.COMPLETED]
        if not delivered:
            first = next(iter(self._errors.values()), ("EngineError", "every language failed"))
            pr.error_type, pr.error_message = first
            await self._end(req, JobState.FAILED)
            raise ApplicationError(f"every target language failed: {first[1]}",
                                   type=first[0], non_retryable=True)
        await self._end(req, JobState.COMPLETED)
        return pr

    async def _shared(self, req: JobRequest) -> SharedArtifacts:
        pr, p = self._progress, req.prefix
        assert pr is not None
        probe = await run_stage(pr, req.task_queues, Stage.PROBE,
                                ProbeInput(req.job_id, req.source_key, p), ProbeResult, 0)
        duration_s = probe.duration_ms / 1000
        pr.duration_ms = probe.duration_ms
        upsert(SA_DURATION.value_set(duration_s))
        sep = await run_stage(pr, req.task_queues, Stage.SEPARATE,
                              SeparateInput(req.job_id, probe.audio_key, p), SeparateResult,
                              duration_s)
        speech_key = sep.speech_key or probe.speech_audio_key
        turns = await run_stage(pr, req.task_queues, Stage.DIARIZE,
                                DiarizeInput(req.job_id, speech_key, p, req.num_speakers),
                                DiarizeResult, duration_s)
        transcript = await run_stage(
            pr, req.task_queues, Stage.TRANSCRIBE,
            TranscribeInput(req.job_id, speech_key, turns.turns_key, p, req.source_language),
            TranscribeResult, duration_s)
        pr.source_language = transcript.language
        pr.stage = None
        upsert(SA_SOURCE_LANGUAGE.value_set(transcript.language))
        return SharedArtifacts(probe=probe, separate=sep, speech_key=speech_key,
                               transcript=transcript)

    async def _language(self, req: JobRequest, lang: str, shared: SharedArtifacts) -> None:
        pr = self._progress
        assert pr is not None
        child = DubbingRequest(
            job_id=req.job_id, source_key=req.source_key, target_language=lang,
            shared=shared, mixing_mode=req.mixing_mode,
            target_script_key=req.target_script_keys.get(lang), lipsync=req.lipsync,
            timing=req.timing, task_queues=req.task_queues, tenant=req.tenant)
        pr.languages[lang] = JobState.RUNNING.value
        try:
            result = await workflow.execute_child_workflow(
                DubbingWorkflow.run, child, id=language_workflow_id(req.job_id, lang),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except ChildWorkflowError as e:
            cause = e.cause
            if isinstance(cause, CancelledError):
                pr.languages[lang] = JobState.CANCELLED.value
                return
            pr.languages[lang] = JobState.FAILED.value
            if isinstance(cause, ApplicationError):
                self._errors[lang] = (cause.type or "EngineError", cause.message)
            else:
                self._errors[lang] = ("EngineError", str(cause or e))
            return
        self._results[lang] = result
        pr.languages[lang] = JobState.COMPLETED.value

    async def _end(self, req: JobRequest, state: JobState) -> None:
        """Refund what no language used (each language settles its own on success), mark
        the job, and send the webhook. Runs on failure and cancellation too."""
        pr = self._progress
        assert pr is not None
        pr.state, pr.stage = state, None
        upsert(SA_STATUS.value_set(state.value))
        await workflow.execute_activity(
            SETTLE_ACTIVITY, SettleInput(req.job_id), result_type=SettleResult,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=ACCOUNT_RETRY)
        if not req.callback_url:
            return
        event = f"job.{state.value}"
        payload: dict[str, Any] = {
            "event": event, "job_id": req.job_id, "status": state.value,
            "languages": dict(pr.languages),
            "error": ({"type": pr.error_type, "message": pr.error_message}
                      if pr.error_type else None),
            "occurred_at": workflow.now().isoformat()}
        try:
            await workflow.execute_activity(
                WEBHOOK_ACTIVITY,
                WebhookInput(delivery_id=f"{req.job_id}:{event}:{workflow.info().run_id}",
                             tenant=req.tenant, job_id=req.job_id, event=event,
                             url=req.callback_url, payload=payload,
                             max_attempts=req.webhook_max_attempts),
                result_type=WebhookResult, start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5),
                                         backoff_coefficient=2.0,
                                         maximum_interval=timedelta(minutes=10),
                                         maximum_attempts=req.webhook_max_attempts))
        except ActivityError:
            workflow.logger.warning("webhook %s to %s was not delivered", event,
                                    req.callback_url)
