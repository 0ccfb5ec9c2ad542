"""The webhook the service calls: a job's event, POSTed to its `webhook` (worker/webhooks.py)."""

from __future__ import annotations

from api.openapi.declare import Schema, header, json_body

SIGNATURE_HEADERS = [
    header(name, description, {"type": "string", "pattern": pattern}, required=True)
    for name, description, pattern in (
        (
            "webhook-id",
            "`msg_{job_id}_{event}`: the same on every retry of one event.",
            "^msg_[0-9a-f]{32}_(started|completed)$",
        ),
        ("webhook-timestamp", "Unix seconds of this attempt.", "^[0-9]+$"),
        (
            "webhook-signature",
            "`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`, keyed "
            "with the base64-decoded part of the secret after `whsec_`: the API key's webhook "
            "secret, or WEBHOOK_SECRET when the service runs open.",
            "^v1,[A-Za-z0-9+/=]+$",
        ),
    )
]
WEBHOOKS: dict[str, Schema] = {
    "jobEvent": {
        "post": {
            "operationId": "job_event",
            "tags": ["jobs"],
            "summary": "A job's webhook event",
            "description": "Sent to a job's `webhook` for each of its `webhook_events`, from the "
            "maintenance worker, signed per Standard Webhooks (https://www.standardwebhooks.com)"
            ": verify `webhook-signature` before trusting the body (docs/usage.md shows how), and "
            "drop a `webhook-id` already seen. Answer 2xx within WEBHOOK_TIMEOUT_SECONDS; "
            "anything else is retried with backoff, up to WEBHOOK_MAX_ATTEMPTS times, and each "
            "attempt is shown in the job's `webhook.deliveries`.",
            "parameters": SIGNATURE_HEADERS,
            "requestBody": json_body("WebhookEvent"),
            "responses": {"2XX": {"description": "Delivered; nothing more is sent for it."}},
        }
    }
}
