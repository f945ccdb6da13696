"""Account activities: settle a job's credits and deliver its webhooks. They touch only the
database and the network: settling runs next to the workflows on `WORKFLOW_TASK_QUEUE`,
deliveries on their own `WEBHOOK_TASK_QUEUE` and thread pool, so a receiver that hangs
never holds a slot a stage or a workflow needs. Every delivery goes through the outbound
guard (`dubcore.outbound`), checked again at each attempt."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from activities._base import stage_activity
from dubcore import accounts
from dubcore.contracts import (
    SETTLE_ACTIVITY,
    WEBHOOK_ACTIVITY,
    SettleInput,
    SettleResult,
    WebhookInput,
    WebhookResult,
)
from dubcore.db import Tenant, WebhookDelivery, utcnow
from dubcore.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from dubcore.outbound import Resolver, guarded_client
from dubcore.settings import Settings

SIGNATURE_HEADER = "X-OpenDub-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` (the receiver recomputes
    it and rejects old timestamps to stop replays)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookDeliveryError(ServiceUnavailableError):
    """The receiver did not answer 2xx: retried with back-off."""


class AccountActivities:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *,
                 resolver: Resolver | None = None) -> None:
        self._sessions = sessions
        self._settings = settings
        self._resolver = resolver

    @activity.defn(name=SETTLE_ACTIVITY)
    @stage_activity
    def settle_credits(self, inp: SettleInput) -> SettleResult:
        with self._sessions() as s:
            settled = sum(accounts.settle(s, inp.job_id, lang) for lang in inp.delivered)
            targets: list[str | None] = [*inp.languages] or [None]
            refunded = sum(accounts.refund(s, inp.job_id, lang) for lang in targets
                           if lang not in inp.delivered)
        return SettleResult(settled_minutes=settled, refunded_minutes=refunded)

    @activity.defn(name=WEBHOOK_ACTIVITY)
    @stage_activity
    def deliver_webhook(self, inp: WebhookInput) -> WebhookResult:
        attempt = activity.info().attempt if activity.in_activity() else 1
        body = json.dumps(inp.payload, separators=(",", ":"), sort_keys=True).encode()
        with self._sessions() as s:
            tenant = s.get(Tenant, inp.tenant)
            if tenant is None:
                raise NotFoundError(f"no tenant {inp.tenant}")
            secret = tenant.webhook_secret
            row = s.get(WebhookDelivery, inp.delivery_id)
            if row is None:
                row = WebhookDelivery(id=inp.delivery_id, tenant_id=inp.tenant,
                                      job_id=inp.job_id, event=inp.event, url=inp.url,
                                      payload=inp.payload, attempts=0)
                s.add(row)
            if row.state == "delivered":
                return WebhookResult(status_code=row.last_status_code or 200,
                                     attempts=row.attempts)
            ts = int(time.time())
            headers = {"Content-Type": "application/json", "User-Agent": "OpenDub-Webhooks",
                       SIGNATURE_HEADER: sign(secret, ts, body),
                       "X-OpenDub-Event": inp.event, "X-OpenDub-Delivery": inp.delivery_id}
            status, error, refused = 0, None, None
            try:
                with guarded_client(self._settings, what="callback_url",
                                    timeout_s=self._settings.webhook_timeout_s,
                                    resolver=self._resolver) as http:
                    status = http.post(inp.url, content=body, headers=headers).status_code
                if not 200 <= status < 300:
                    error = f"the receiver answered HTTP {status}"
            except InvalidRequestError as e:  # the guard refused the destination: final
                refused, error = e, e.message
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            row.attempts += 1
            row.last_attempt_at = utcnow()
            row.last_status_code = status or None
            row.last_error = error
            if error is None:
                row.state, row.delivered_at = "delivered", utcnow()
            elif refused is not None or attempt >= inp.max_attempts > 0:
                row.state = "failed"
            s.commit()
        if refused is not None:
            raise refused  # non-retryable: the same URL is refused at every attempt
        if error is not None:
            raise WebhookDeliveryError(f"webhook {inp.event} to {inp.url}: {error}")
        return WebhookResult(status_code=status, attempts=attempt)
