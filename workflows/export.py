"""`ExportWorkflow`: one export of a finished version, tracked as its own task (id
``export-{id}``): the export activity, then the signed ``export.*`` webhook."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from dubcore.contracts import (
        EXPORT_ACTIVITY,
        WEBHOOK_ACTIVITY,
        WEBHOOK_ATTEMPT_TIMEOUT_S,
        WEBHOOK_TASK_QUEUE,
        ExportRequest,
        ExportResult,
        WebhookInput,
        WebhookResult,
    )

from workflows.stages import RETRY, failure_of, webhook_retry


@workflow.defn
class ExportWorkflow:
    @workflow.run
    async def run(self, req: ExportRequest) -> ExportResult:
        try:
            result = await workflow.execute_activity(
                EXPORT_ACTIVITY, req, task_queue=req.task_queue, result_type=ExportResult,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(minutes=2), retry_policy=RETRY)
        except ActivityError as e:
            failure = failure_of(e)
            await self._notify(req, "export.failed", {
                "error": {"type": failure.error_type, "message": failure.message}})
            raise ApplicationError(f"export failed: {failure.message}",
                                   type=failure.error_type, non_retryable=True) from e
        await self._notify(req, "export.completed", {
            "size_bytes": result.size_bytes, "content_type": result.content_type})
        return result

    async def _notify(self, req: ExportRequest, event: str, extra: dict[str, Any]) -> None:
        if not req.callback_url:
            return
        payload: dict[str, Any] = {
            "event": event, "export_id": req.export_id, "job_id": req.job_id,
            "language": req.language, "version": req.version, "format": req.format.value,
            "occurred_at": workflow.now().isoformat(), **extra}
        try:
            await workflow.execute_activity(
                WEBHOOK_ACTIVITY,
                WebhookInput(delivery_id=f"{req.export_id}:{event}", tenant=req.tenant,
                             job_id=req.job_id, event=event, url=req.callback_url,
                             payload=payload, max_attempts=req.webhook_max_attempts),
                result_type=WebhookResult, task_queue=WEBHOOK_TASK_QUEUE,
                start_to_close_timeout=timedelta(seconds=WEBHOOK_ATTEMPT_TIMEOUT_S),
                retry_policy=webhook_retry(req.webhook_max_attempts))
        except ActivityError:
            workflow.logger.warning("webhook %s to %s was not delivered", event,
                                    req.callback_url)
