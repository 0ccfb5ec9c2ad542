"""The webhook delivery task (maintenance queue): sign, post to the checked address, record, retry.

Each attempt resolves the target's name once, refuses any address not public (nor in
WEBHOOK_ALLOWED_NETWORKS), and connects to the address it checked, so a rebinding DNS answer
cannot slip a private one in; redirects are never followed. A retry is Celery's: its message is
unacknowledged while it waits, and Redis may hand it to another worker after its visibility
timeout, so each attempt takes a Redis lock and is skipped if recorded.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import webhooks
from models.errors import WebhookTargetNotAllowed
from models.job_view import JobView, WebhookEvent, iso_time
from models.queue import send_webhook
from models.tables import ApiKey, Job, WebhookDelivery, utcnow
from worker import clients
from worker.celery_app import app, settings

_LOGGER = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "voicechat-webhooks/1"
LOCK_PREFIX = "voicechat:webhook-attempt:"


def queue_delivery(job_id: str, event: str) -> None:
    """The `WebhookSender` of the job worker and its parent: queues an event's first attempt."""
    send_webhook(app, job_id, event)


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the answer's status, or why there was none."""

    status_code: int | None = None
    error: str | None = None  # a stable word: timeout, connection_failed, target_not_allowed, ...
    retry: bool = True

    @property
    def delivered(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
    """Posts one delivery to the checked address the URL's name resolves to."""
    parts = webhooks.check_url(url)
    try:
        addresses = webhooks.resolve_target(parts, networks=settings.webhook_allowed_networks)
    except WebhookTargetNotAllowed:
        return Outcome(error="target_not_allowed", retry=False)
    except OSError:
        return Outcome(error="unresolvable")
    connection = _connection(parts, str(addresses[0]))
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)  # bounded: the rest is dropped with the connection
        return Outcome(status_code=response.status, error=None)
    except TimeoutError:
        return Outcome(error="timeout")
    except ssl.SSLError:
        return Outcome(error="tls_failed")
    except (OSError, http.client.HTTPException):
        return Outcome(error="connection_failed")
    finally:
        connection.close()


def _connection(parts: SplitResult, address: str) -> http.client.HTTPConnection:
    """A connection to the address already checked, speaking to the URL's name (HTTPS verifies
    the certificate for that name, which also goes out as SNI)."""
    host, port = parts.hostname or "", webhooks.port_of(parts)
    timeout = settings.webhook_timeout_seconds
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def pinned(_: object, timeout: float, source: tuple[str, int] | None) -> socket.socket:
        return socket.create_connection((address, port), timeout, source)

    # `connect` opens its socket through this hook: pinned to the address, never resolved again.
    connection._create_connection = pinned  # type: ignore[attr-defined]
    return connection


def _secret(session: Session, job: Job) -> str:
    """The job's API key's secret; WEBHOOK_SECRET for a job made while the service ran open."""
    if job.api_key_id is not None:
        key = session.get(ApiKey, job.api_key_id)
        return key.webhook_secret if key is not None else ""
    return settings.webhook_secret.get_secret_value()


def _body(job: Job, event: str) -> bytes:
    stamp = job.started_at if event == webhooks.STARTED else job.finished_at
    payload = WebhookEvent(
        type=f"job.{event}",  # type: ignore[arg-type]
        timestamp=iso_time(stamp or utcnow()),
        data=JobView.of(job),
    )
    return json.dumps(payload.model_dump(mode="json"), separators=(",", ":")).encode()


def _recorded(session: Session, msg_id: str, attempt: int) -> bool:
    """Whether this event was delivered already, or this attempt of it has run."""
    query = select(WebhookDelivery.id).where(
        WebhookDelivery.message_id == msg_id,
        (WebhookDelivery.delivered.is_(True)) | (WebhookDelivery.attempt == attempt),
    )
    return session.scalar(query.limit(1)) is not None


def attempt_delivery(session: Session, job: Job, event: str, attempt: int) -> Outcome:
    """Signs and posts one attempt, and records it on the job."""
    msg_id = webhooks.message_id(job.id, event)
    secret = _secret(session, job)
    if secret:
        try:
            body = _body(job, event)
            signed = webhooks.signed_headers(secret, msg_id, body)
        except Exception:  # recorded on the job, never retried: it would fail the same way
            _LOGGER.exception("webhook not built job_id=%s event=%s", job.id, event)
            outcome = Outcome(error="internal_error", retry=False)
        else:
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **signed}
            outcome = post(job.webhook_url or "", body, headers)
    else:  # a key gone, or WEBHOOK_SECRET unset since the job was accepted: nothing signs
        outcome = Outcome(error="no_secret", retry=False)
    if outcome.status_code is not None and not outcome.delivered:
        outcome = Outcome(status_code=outcome.status_code, error="http_status")
    session.add(
        WebhookDelivery(
            job_id=job.id,
            event=event,
            message_id=msg_id,
            attempt=attempt,
            status_code=outcome.status_code,
            error=outcome.error,
            delivered=outcome.delivered,
        )
    )
    try:
        session.commit()
    except IntegrityError:  # the job was erased (DELETE) while this attempt was made
        session.rollback()  # which expires `job`: its id is read from the message's
        _LOGGER.info("webhook attempt not recorded: job erased message_id=%s", msg_id)
        return Outcome(outcome.status_code, outcome.error, retry=False)
    return outcome


@app.task(name="worker.deliver_webhook", acks_late=True, ignore_result=True)
def deliver_webhook(job_id: str, event: str) -> None:
    """Delivers one attempt of a job's webhook event; retried up to WEBHOOK_MAX_ATTEMPTS."""
    attempt = deliver_webhook.request.retries + 1
    msg_id = webhooks.message_id(job_id, event)
    lock = f"{LOCK_PREFIX}{msg_id}:{attempt}"
    # Held for longer than an attempt can take; a crashed attempt's lock expires for its retry.
    if not clients.redis().set(lock, "1", nx=True, ex=settings.webhook_timeout_seconds * 3 + 30):
        return
    with clients.sessions()() as session:
        job = session.get(Job, job_id)
        if job is None or not webhooks.wants(job, event) or _recorded(session, msg_id, attempt):
            return
        outcome = attempt_delivery(session, job, event, attempt)
    log: Any = _LOGGER.info if outcome.delivered else _LOGGER.warning
    log(
        "webhook attempt job_id=%s event=%s attempt=%d status=%s error=%s",
        job_id,
        event,
        attempt,
        outcome.status_code,
        outcome.error,
    )
    if not outcome.delivered and outcome.retry and attempt < settings.webhook_max_attempts:
        steps = settings.webhook_backoff_seconds  # the last step for every attempt past the list
        countdown = steps[min(attempt, len(steps)) - 1]
        raise deliver_webhook.retry(countdown=countdown, max_retries=None)
