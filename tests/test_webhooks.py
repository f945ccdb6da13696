"""Job webhooks: HMAC-SHA256 over timestamp and body, retried with back-off by Temporal on
their own task queue, each delivery recorded with its attempts. (The outbound guard they go
through is tested in test_outbound.py.)"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.account import AccountActivities, sign
from dubcore import accounts, jobs
from dubcore.contracts import STAGES, WEBHOOK_TASK_QUEUE, JobRequest
from dubcore.db import Tenant, WebhookDelivery
from dubcore.settings import Settings
from tests.conftest import tenant_sessions
from tests.fakes import FakeStages, workflow_activities
from workflows.dubbing import DubbingWorkflow
from workflows.job import DubbingJobWorkflow


class Receiver:
    """A real HTTP endpoint that fails the first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                code = 503 if len(outer.received) <= outer.fail_first else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from tenant_sessions(tmp_path, minutes=10)


async def _run_job(env: WorkflowEnvironment, sessions: sessionmaker[Session], url: str,
                   max_attempts: int) -> str:
    queue = f"q-{uuid.uuid4().hex}"
    req = JobRequest(job_id=uuid.uuid4().hex, source_key="uploads/x/source.mp4",
                     target_languages=["pt-BR"], tenant="acme", callback_url=url,
                     webhook_max_attempts=max_attempts,
                     task_queues={s.value: queue for s in STAGES})
    with sessions() as s:
        accounts.reserve(s, "acme", req.job_id, ["pt-BR"], 1)
    # The receiver listens on loopback: an operator-allowed network here.
    settings = Settings(webhook_timeout_s=5, outbound_allowed_networks=["127.0.0.0/8"])
    account = AccountActivities(sessions, settings)
    with ThreadPoolExecutor(4) as pool, ThreadPoolExecutor(1) as hooks:
        async with Worker(env.client, task_queue=queue,
                          workflows=[DubbingJobWorkflow, DubbingWorkflow],
                          activities=[*FakeStages().activities(),
                                      *workflow_activities(sessions, settings)],
                          activity_executor=pool), \
                Worker(env.client, task_queue=WEBHOOK_TASK_QUEUE,
                       activities=[account.deliver_webhook], activity_executor=hooks):
            await env.client.execute_workflow(DubbingJobWorkflow.run, req,
                                              id=jobs.job_workflow_id(req.job_id),
                                              task_queue=queue)
    return req.job_id


async def test_signed_and_retried_until_delivered(time_skipping_env: WorkflowEnvironment,
                                                  sessions: sessionmaker[Session]) -> None:
    receiver = Receiver(fail_first=2)
    try:
        job_id = await _run_job(time_skipping_env, sessions, receiver.url, max_attempts=5)
    finally:
        receiver.close()
    assert len(receiver.received) == 3  # two 503s, then delivered
    with sessions() as s:
        secret = s.get(Tenant, "acme").webhook_secret  # type: ignore[union-attr]
        row = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
    assert (row.state, row.attempts, row.last_status_code) == ("delivered", 3, 204)
    headers, body = receiver.received[-1]
    assert headers["X-OpenDub-Event"] == "job.completed"
    ts, v1 = (part.split("=", 1)[1] for part in headers["X-OpenDub-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, expected)
    assert headers["X-OpenDub-Signature"] == sign(secret, int(ts), body)
    # A tampered body or another secret does not verify.
    assert sign(secret, int(ts), body + b" ") != headers["X-OpenDub-Signature"]
    assert sign("other", int(ts), body) != headers["X-OpenDub-Signature"]
    payload = json.loads(body)
    assert payload["job_id"] == job_id and payload["status"] == "completed"
    assert payload["languages"] == {"pt-BR": "completed"}


async def test_undeliverable_webhook_is_recorded_and_the_job_still_ends(
        time_skipping_env: WorkflowEnvironment, sessions: sessionmaker[Session]) -> None:
    receiver = Receiver(fail_first=100)
    try:
        job_id = await _run_job(time_skipping_env, sessions, receiver.url, max_attempts=3)
    finally:
        receiver.close()
    assert len(receiver.received) == 3
    with sessions() as s:
        row = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        held = {r.state for r in accounts.reservations(s, job_id)}
    assert (row.state, row.attempts, row.last_status_code) == ("failed", 3, 503)
    assert "HTTP 503" in (row.last_error or "")
    assert held == {"settled"}
