"""Job webhooks: which events a job wants, where they may go, and how a delivery is signed.

Shared by the API (checks at submit) and the maintenance worker (checks again at delivery, after
its own DNS resolution, and signs with the Standard Webhooks reference library).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import SplitResult, urlsplit

from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from models.errors import InvalidWebhookUrl, WebhookTargetNotAllowed
from models.tables import Job

_LOGGER = logging.getLogger(__name__)

STARTED = "started"
COMPLETED = "completed"  # any terminal status: succeeded, failed or canceled
EVENTS = (STARTED, COMPLETED)
DEFAULT_EVENTS = (COMPLETED,)
MAX_URL_LENGTH = 2048
SCHEMES = ("https", "http")

# Sends the delivery of (job id, event) to the maintenance queue; raises when it cannot.
WebhookSender = Callable[[str, str], None]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_url(url: str) -> SplitResult:
    """Checks a webhook URL's form (no network): http(s), a host, no credentials, ≤ 2048 chars;
    InvalidWebhookUrl says why not."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"webhook must be at most {MAX_URL_LENGTH} characters.")
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidWebhookUrl("webhook must be an ASCII URL without spaces.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise InvalidWebhookUrl("webhook is not a valid URL.") from None
    if parts.scheme not in SCHEMES:
        raise InvalidWebhookUrl("webhook must be an https or http URL.")
    if not parts.hostname:
        raise InvalidWebhookUrl("webhook must name a host.")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("webhook must not carry credentials; sign, don't embed them.")
    return parts


def port_of(parts: SplitResult) -> int:
    """The URL's port, or its scheme's default."""
    return parts.port or (443 if parts.scheme == "https" else 80)


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def allowed_address(address: Address, networks: tuple[Network, ...] = ()) -> bool:
    """Whether a webhook may reach an address: a public one, or a private or loopback one inside
    `networks` (WEBHOOK_ALLOWED_NETWORKS); never a link-local one, even in a listed network:
    169.254.169.254 is a cloud's metadata service (issue 20)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # ::1 lies in IPv6's reserved ::/8, and is loopback first.
    reserved = address.is_reserved and not address.is_loopback
    # 0.0.0.0/8 is "this network" (RFC 1122): an unspecified source, never a destination.
    unspecified = address.is_unspecified or address in _THIS_NETWORK
    if address.is_link_local or address.is_multicast or reserved or unspecified:
        return False
    return address.is_global or any(address in network for network in networks)


def resolve_target(parts: SplitResult, *, networks: tuple[Network, ...]) -> list[Address]:
    """Resolves the URL's host once (OSError if it cannot); connect to one of the addresses
    returned, never resolve again. Every one must be allowed (else WebhookTargetNotAllowed): a name
    that mixes a public address with a private one would otherwise lead to the private one."""
    host = parts.hostname or ""
    infos = socket.getaddrinfo(host, port_of(parts), type=socket.SOCK_STREAM)
    # Each address once, in the resolver's order (an IPv6 address without its `%zone`).
    found = (ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)
    addresses = list(dict.fromkeys(found))
    if not all(allowed_address(address, networks) for address in addresses):
        raise WebhookTargetNotAllowed(
            "webhook's host resolves to a private, loopback, link-local or other non-public "
            "address that webhooks may not reach.",
            field="webhook",
        )
    return addresses


def check_target(url: str, *, networks: tuple[Network, ...]) -> None:
    """The submit-time check: the URL's form, then its resolved addresses."""
    parts = check_url(url)
    try:
        resolve_target(parts, networks=networks)
    except OSError:
        raise InvalidWebhookUrl("webhook's host does not resolve.", field="webhook") from None


def message_id(job_id: str, event: str) -> str:
    """The `webhook-id` of a job's event: the same on every retry, and if the event is sent
    twice (an end announced again by the reconciler), so a receiver can drop the copy."""
    return f"msg_{job_id}_{event}"


def signed_headers(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery of `body`, signed now with a `whsec_`
    secret (an API key's, or WEBHOOK_SECRET)."""
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


def wants(job: Job, event: str) -> bool:
    """Whether the job asked for a webhook on `event`."""
    return bool(job.webhook_url) and event in (job.webhook_events or DEFAULT_EVENTS)


def announce(session: Session, job_id: str, event: str, send: WebhookSender) -> bool:
    """Queues a job's `event` delivery if the job wants it, after the transition that made the
    event committed; False when the queue was unreachable (logged; a caller that can, retries)."""
    job = session.get(Job, job_id)
    if job is None or not wants(job, event):
        return True
    try:
        send(job_id, event)
    except Exception as error:  # the broker is out: the caller retries, or the event is lost
        _LOGGER.warning(
            "webhook not queued job_id=%s event=%s error=%s", job_id, event, type(error).__name__
        )
        return False
    _LOGGER.info("webhook queued job_id=%s event=%s", job_id, event)
    return True
