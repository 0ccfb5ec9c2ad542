"""`GET /metrics` for Prometheus, and the figures of every answer: counts and timings only (no
id, no text, no key). A scraper usually runs on another host, hence METRICS_TOKEN."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from api.authentication import bearer_token, from_this_machine
from api.health import QUIET_PATHS
from api.openapi.declare import answer, content, documented
from models import heartbeat, metrics
from models.errors import InvalidMetricsToken, MetricsNotAllowed
from models.queue import waiting_jobs
from models.settings import Settings

_LOGGER = logging.getLogger(__name__)

blueprint = Blueprint("metrics", __name__)
UNMATCHED = "unmatched"
_BROKER_UP = "1 when Redis answered this scrape, else 0."


class LiveFigures(Collector):
    """The queue's depth, the ready workers and whether Redis answered, read at each scrape;
    a Redis that does not answer leaves `voicechat_broker_up` at 0 and fails no scrape."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[Metric]:
        try:
            depth = waiting_jobs(self.redis)
            workers = heartbeat.live_workers(self.redis)
        except (RedisError, OSError) as error:
            _LOGGER.warning("live figures unread error=%s", type(error).__name__)
            yield GaugeMetricFamily("voicechat_broker_up", _BROKER_UP, value=0)
            return
        yield GaugeMetricFamily("voicechat_broker_up", _BROKER_UP, value=1)
        yield GaugeMetricFamily(
            "voicechat_queue_depth", "Jobs waiting in the queue for a worker.", value=depth
        )
        ready = sum(1 for worker in workers if worker.get("models_loaded"))
        yield GaugeMetricFamily(
            "voicechat_workers_ready",
            "Job workers, on any host, with their models loaded (what /readyz counts).",
            value=ready,
        )


@blueprint.get("/metrics")
@documented(
    {
        200: answer(
            "The figures, in Prometheus's text format (0.0.4).",
            body=content({"type": "string"}, metrics.CONTENT_TYPE),
        )
    },
    errors=(InvalidMetricsToken, MetricsNotAllowed),
    notes={
        401: "With METRICS_TOKEN set.",
        403: "With METRICS_TOKEN unset, to a request from another machine or through a proxy.",
    },
    security=("MetricsToken",),
)
def prometheus_metrics() -> Response:
    """Prometheus metrics.

    Jobs finished by status and error code, stage latencies, time to first audio, the queue's
    depth, ready workers and HTTP requests, summed over this host's processes (the API's and
    the workers'). Never rate limited; no API key.
    """
    settings: Settings = current_app.extensions["voicechat.settings"]
    if settings.metrics_token:
        sent = bearer_token()
        if not sent or not hmac.compare_digest(
            sent.encode(), settings.metrics_token.get_secret_value().encode()
        ):
            g.auth_failure = "invalid_token" if sent else None
            raise InvalidMetricsToken("Send METRICS_TOKEN: `Authorization: Bearer <token>`.")
    elif not from_this_machine():
        raise MetricsNotAllowed(
            "The metrics are served to this machine only; set METRICS_TOKEN to scrape from "
            "elsewhere."
        )
    body = metrics.exposition(LiveFigures(current_app.extensions["voicechat.redis"]))
    return Response(body, content_type=metrics.CONTENT_TYPE)


def register_request_figures(app: Flask) -> None:
    """Counts and times every answer by route, method and status (timed from the request's
    opening hook, api/__init__.py, the first: a hook of its own costs every request its call),
    but the probes' and scrapes' (QUIET_PATHS): what a machine asks every few seconds says
    nothing of the API's use, and counting was the largest of the hooks after a probe's view."""

    @app.after_request
    def _count(response: Response) -> Response:
        if request.path in QUIET_PATHS:
            return response
        started = g.get("request_started")
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if started is not None:
            seconds = time.perf_counter() - started
            metrics.HTTP_SECONDS.labels(route, request.method).observe(seconds)
        return response
