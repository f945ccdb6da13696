"""`DubbingJobWorkflow`: one dubbing job. It runs the shared stages once (probe, separate,
diarize, transcribe), then one child `DubbingWorkflow` per target language, each with its
own status and result; when all have ended it refunds what no language used and sends the
signed ``job.*`` webhook.

Then it stays open for review (``review_window_s``): a ``revise`` update makes the next
numbered version of one language's dub, re-synthesizing only the lines that changed and
re-mixing with the first version's loudness gain, so that what was not edited comes out
the same. The window restarts with every revision; when it passes, the workflow ends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

with workflow.unsafe.imports_passed_through():
    from dubcore.contracts import (
        REVISE_UPDATE,
        SETTLE_ACTIVITY,
        WEBHOOK_ACTIVITY,
        WEBHOOK_ATTEMPT_TIMEOUT_S,
        WEBHOOK_TASK_QUEUE,
        DiarizeInput,
        DiarizeResult,
        DubbingRequest,
        DubbingResult,
        JobProgress,
        JobRequest,
        JobState,
        LipSyncInput,
        LipSyncResult,
        MixInput,
        MixResult,
        ProbeInput,
        ProbeResult,
        RevisionRequest,
        SeparateInput,
        SeparateResult,
        SettleInput,
        SettleResult,
        SharedArtifacts,
        Stage,
        SynthesizeInput,
        SynthesizeResult,
        TranscribeInput,
        TranscribeResult,
        Version,
        WebhookInput,
        WebhookResult,
        check_revision,
        job_workflow_id,
        language_workflow_id,
        version_one,
    )
    from dubcore.errors import DubbingError

from workflows.dubbing import DubbingWorkflow
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
    webhook_retry,
)


@workflow.defn
class DubbingJobWorkflow:
    def __init__(self) -> None:
        self._progress: JobProgress | None = None
        self._results: dict[str, DubbingResult] = {}
        self._errors: dict[str, tuple[str, str]] = {}
        self._req: JobRequest | None = None
        self._shared_artifacts: SharedArtifacts | None = None
        self._touched = False
        self._publisher: StatusPublisher | None = None

    @workflow.query
    def status(self) -> JobProgress:
        if self._progress is None:
            raise ApplicationError("the job has not started yet")
        return self._progress

    @workflow.update(name=REVISE_UPDATE)
    async def revise(self, req: RevisionRequest) -> Version:
        """Make the next version of one language's dub from an edited script, voices or
        mixing mode. Returns the finished version (or fails the update, never the job)."""
        pr, job, shared = self._progress, self._req, self._shared_artifacts
        assert pr is not None and job is not None and shared is not None
        base = check_revision(pr, req)
        versions = pr.versions[req.language]
        mode = req.mixing_mode or base.mixing_mode
        v = Version(version=versions[-1].version + 1, state=JobState.RUNNING,
                    created_at=workflow.now().isoformat(),
                    script_key=req.script_key or base.script_key, mixing_mode=mode,
                    changed_segments=list(req.changed_segments),
                    changed_speakers=sorted(req.voices), note=req.note)
        versions.append(v)
        self._touched = True
        await self._publish()
        prefix = f"jobs/{job.job_id}/{req.language}/v{v.version}"
        duration_s = shared.probe.duration_ms / 1000
        try:
            if req.changed_segments or req.voices:
                speech = await run_stage(
                    v, job.task_queues, Stage.SYNTHESIZE,
                    SynthesizeInput(job.job_id, v.script_key, shared.speech_key, req.language,
                                    shared.probe.duration_ms, prefix, job.timing,
                                    voices=req.voices, speakers_key=base.speakers_key,
                                    previous_fits_key=base.fits_key),
                    SynthesizeResult, duration_s, self._publish)
                v.dub_key, v.fits_key, v.speakers_key = (speech.dub_key, speech.fits_key,
                                                         speech.speakers_key)
                v.lines_synthesized, v.lines_reused = (speech.lines_synthesized,
                                                       speech.lines_reused)
            else:
                v.dub_key, v.fits_key, v.speakers_key = (base.dub_key, base.fits_key,
                                                         base.speakers_key)
            source_key = shared.probe.source_key or job.source_key
            lips = await run_stage(
                v, job.task_queues, Stage.LIPSYNC,
                LipSyncInput(job.job_id, source_key, v.dub_key, prefix, job.lipsync),
                LipSyncResult, duration_s, self._publish)
            mixed = await run_stage(
                v, job.task_queues, Stage.MIX,
                MixInput(job.job_id, source_key, v.dub_key, shared.probe.audio_key,
                         shared.separate.background_key, mode, prefix, lips.video_key,
                         gain_db=base.gain_db if mode == base.mixing_mode else None),
                MixResult, duration_s, self._publish)
        except ActivityError as e:
            failure = failure_of(e)
            v.state, v.error_type, v.error_message = (JobState.FAILED, failure.error_type,
                                                      failure.message)
            v.stage = None
            self._touched = True
            await self._publish()
            await self._notify(job, "job.revision.failed", self._revision_payload(req, v))
            raise ApplicationError(f"version {v.version} failed: {failure.message}",
                                   type=failure.error_type, non_retryable=True) from e
        v.output_key, v.audio_key, v.duration_ms = (mixed.output_key, mixed.audio_key,
                                                     mixed.duration_ms)
        v.loudness_lufs, v.gain_db = mixed.loudness_lufs, mixed.gain_db
        v.state, v.stage = JobState.COMPLETED, None
        self._touched = True
        await self._publish()
        await self._notify(job, "job.revision.completed", self._revision_payload(req, v))
        return v

    @revise.validator
    def _check_revise(self, req: RevisionRequest) -> None:
        if self._progress is None:
            raise ApplicationError("the job has not started yet", type="ConflictError",
                                   non_retryable=True)
        try:
            check_revision(self._progress, req)
        except DubbingError as e:
            raise ApplicationError(e.message, type=e.type_name, non_retryable=True) from e

    @workflow.run
    async def run(self, req: JobRequest) -> JobProgress:
        self._req = req
        self._publisher = StatusPublisher(job_workflow_id(req.job_id), req.job_id)
        pr = self._progress = JobProgress(
            job_id=req.job_id, target_languages=list(req.target_languages),
            state=JobState.RUNNING,
            languages={lang: JobState.QUEUED.value for lang in req.target_languages})
        upsert(SA_STATUS.value_set(JobState.RUNNING.value),
               SA_TARGET_LANGUAGE.value_set(",".join(req.target_languages)),
               SA_SOURCE_LANGUAGE.value_set(req.source_language),
               SA_TENANT.value_set(req.tenant))
        await self._publish()
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
        await self._review(req)
        return pr

    async def _review(self, req: JobRequest) -> None:
        """Stay open for revisions until the window passes with none made or running."""
        pr = self._progress
        assert pr is not None
        if req.review_window_s <= 0:
            return
        window = timedelta(seconds=req.review_window_s)
        pr.review_open = True
        try:
            while True:
                pr.review_closes_at = (workflow.now() + window).isoformat()
                self._touched = False
                await self._publish()
                try:
                    await workflow.wait_condition(lambda: self._touched, timeout=window)
                except TimeoutError:
                    if not any(vs[-1].state is JobState.RUNNING
                               for vs in pr.versions.values()):
                        break
        except (asyncio.CancelledError, CancelledError):
            pass  # cancelling a finished job closes its review
        pr.review_open, pr.review_closes_at = False, None
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._publish()

    async def _shared(self, req: JobRequest) -> SharedArtifacts:
        pr, p = self._progress, req.prefix
        assert pr is not None
        probe = await run_stage(pr, req.task_queues, Stage.PROBE,
                                ProbeInput(req.job_id, req.source_key, p, req.start_ms,
                                           req.end_ms), ProbeResult, 0, self._publish)
        duration_s = probe.duration_ms / 1000
        pr.duration_ms = probe.duration_ms
        upsert(SA_DURATION.value_set(duration_s))
        if req.dub_audio_key:  # the user brings the dubbed track: nothing to hear or say
            pr.stage = None
            self._shared_artifacts = SharedArtifacts(
                probe=probe, speech_key=probe.speech_audio_key,
                separate=SeparateResult(probe.audio_key, probe.audio_key, "not run"),
                transcript=TranscribeResult("", req.source_language, 0, "not run"))
            return self._shared_artifacts
        sep = await run_stage(pr, req.task_queues, Stage.SEPARATE,
                              SeparateInput(req.job_id, probe.audio_key, p), SeparateResult,
                              duration_s, self._publish)
        speech_key = sep.speech_key or probe.speech_audio_key
        pr.background_key = sep.background_key
        turns = await run_stage(pr, req.task_queues, Stage.DIARIZE,
                                DiarizeInput(req.job_id, speech_key, p, req.num_speakers),
                                DiarizeResult, duration_s, self._publish)
        transcript = await run_stage(
            pr, req.task_queues, Stage.TRANSCRIBE,
            TranscribeInput(req.job_id, speech_key, turns.turns_key, p, req.source_language,
                            req.transcript_key),
            TranscribeResult, duration_s, self._publish)
        pr.source_language, pr.transcript_key = transcript.language, transcript.transcript_key
        pr.stage = None
        upsert(SA_SOURCE_LANGUAGE.value_set(transcript.language))
        self._shared_artifacts = SharedArtifacts(probe=probe, separate=sep,
                                                 speech_key=speech_key, transcript=transcript)
        return self._shared_artifacts

    async def _language(self, req: JobRequest, lang: str, shared: SharedArtifacts) -> None:
        pr = self._progress
        assert pr is not None
        child = DubbingRequest(
            job_id=req.job_id, source_key=shared.probe.source_key or req.source_key,
            target_language=lang,
            shared=shared, mixing_mode=req.mixing_mode,
            target_script_key=req.target_script_keys.get(lang), lipsync=req.lipsync,
            timing=req.timing, task_queues=req.task_queues, tenant=req.tenant,
            voices=req.voices, pause_for_review=req.pause_for_review,
            dub_audio_key=req.dub_audio_key, glossary_key=req.glossary_key)
        pr.languages[lang] = JobState.RUNNING.value
        await self._publish()  # the shared stages are done: no job-level stage runs now
        await self._run_child(child)
        await self._publish()

    async def _run_child(self, child: DubbingRequest) -> None:
        """One language's workflow, to its end; records how it ended."""
        pr, lang = self._progress, child.target_language
        assert pr is not None
        try:
            result = await workflow.execute_child_workflow(
                DubbingWorkflow.run, child, id=language_workflow_id(child.job_id, lang),
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
        pr.versions[lang] = [version_one(result, workflow.now().isoformat())]
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
        await self._publish()  # after the refund: a reader sees an ended, settled job
        event = f"job.{state.value}"
        await self._notify(req, event, {
            "event": event, "job_id": req.job_id, "status": state.value,
            "languages": dict(pr.languages),
            "error": ({"type": pr.error_type, "message": pr.error_message}
                      if pr.error_type else None),
            "occurred_at": workflow.now().isoformat()})

    async def _publish(self) -> None:
        assert self._publisher is not None
        await self._publisher.publish(job=self._progress)

    def _revision_payload(self, req: RevisionRequest, v: Version) -> dict[str, Any]:
        assert self._req is not None
        return {"event": f"job.revision.{v.state.value}", "job_id": self._req.job_id,
                "language": req.language, "version": v.version, "status": v.state.value,
                "changed_segments": v.changed_segments,
                "error": ({"type": v.error_type, "message": v.error_message}
                          if v.error_type else None),
                "occurred_at": workflow.now().isoformat()}

    async def _notify(self, req: JobRequest, event: str, payload: dict[str, Any]) -> None:
        """The signed webhook, retried with back-off; a receiver that never answers does
        not fail the job."""
        if not req.callback_url:
            return
        try:
            await workflow.execute_activity(
                WEBHOOK_ACTIVITY,
                WebhookInput(delivery_id=f"{req.job_id}:{event}:{workflow.info().run_id}"
                             + (f":{payload['language']}:{payload['version']}"
                                if "version" in payload else ""),
                             tenant=req.tenant, job_id=req.job_id, event=event,
                             url=req.callback_url, payload=payload,
                             max_attempts=req.webhook_max_attempts),
                result_type=WebhookResult, task_queue=WEBHOOK_TASK_QUEUE,
                start_to_close_timeout=timedelta(seconds=WEBHOOK_ATTEMPT_TIMEOUT_S),
                retry_policy=webhook_retry(req.webhook_max_attempts))
        except ActivityError:
            workflow.logger.warning("webhook %s to %s was not delivered", event,
                                    req.callback_url)
