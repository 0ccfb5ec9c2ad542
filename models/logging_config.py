"""How every process logs: JSON lines or text, with request and job ids, and no secret.

The ids travel in context variables (`REQUEST_ID` set by the API, `JOB_ID` by the worker) that a
filter on the one handler copies onto each record; a line naming `job_id=…` or a Celery task
record gets it too, whatever thread logged it. gunicorn's access lines take `X-Request-ID` from
the answer, written after the request's context is gone.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from models.queue import RUN_JOB_TASK

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)

_JOB_IN_TEXT = re.compile(r"\bjob_id=([0-9a-f]{32})\b")
# What a secret looks like wherever it shows up: an API key, a webhook secret, a bearer
# credential or a password in a URL. Replaced in the finished line, so no field escapes it.
_SECRETS = re.compile(
    r"\bvc_[A-Za-z0-9_-]{8,}"
    r"|\bwhsec_[A-Za-z0-9+/=]{8,}"
    r"|(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(?<=://)[^/@\s:\"]+:[^/@\s\"]+(?=@)"
)
_SECRET_MARKS = ("vc_", "whsec_", "bearer", "basic", "://")
REDACTED = "[redacted]"
# Settings whose values are secrets of their own shape: each is replaced wherever it appears.
_SECRET_SETTINGS = ("METRICS_TOKEN", "LLM_API_KEY", "WEBHOOK_SECRET", "FLOWER_BASIC_AUTH")
# gunicorn's access record: its arguments are the atoms of `access_log_format`.
_ACCESS_FIELDS = {"m": "method", "U": "path", "s": "status", "M": "duration_ms"}


def _configured_secrets() -> tuple[str, ...]:
    found: list[str] = []
    for name in _SECRET_SETTINGS:
        for value in os.environ.get(name, "").split(","):
            secret = value.partition(":")[2] if name == "FLOWER_BASIC_AUTH" else value
            if len(secret.strip()) >= 8:
                found.append(secret.strip())
    return tuple(found)


def redact(text: str, literal: tuple[str, ...] = ()) -> str:
    """`text` with every secret in it (and each `literal` value) replaced by `[redacted]`."""
    for secret in literal:
        text = text.replace(secret, REDACTED)
    # Each of _SECRETS' shapes holds one of these: most lines hold none, and the substring
    # checks cost a fraction of the pattern's scan, which was most of a line's formatting.
    lower = text.lower()
    if any(mark in lower for mark in _SECRET_MARKS):
        return _SECRETS.sub(REDACTED, text)
    return text


class ContextFilter(logging.Filter):
    """Puts `request_id` and `job_id` on each record that has them; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            atoms = record.args
            for atom, name in _ACCESS_FIELDS.items():
                setattr(record, name, atoms.get(atom))
            record.request_id = atoms.get("{x-request-id}o") or None
        if getattr(record, "request_id", None) is None and (request := REQUEST_ID.get()):
            record.request_id = request
        if getattr(record, "job_id", None) is None and (job := _job_of(record)):
            record.job_id = job
        return True


def _job_of(record: logging.LogRecord) -> str | None:
    """The job of a record: the one running here, Celery's task, or one its text names."""
    if job := JOB_ID.get():
        return job
    args = record.args
    if isinstance(args, dict) and args.get("name") == RUN_JOB_TASK and args.get("id"):
        return str(args["id"])
    if "job_id=" in str(record.msg):
        named = _JOB_IN_TEXT.search(record.getMessage())
        return named[1] if named else None
    return None


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: time, level, logger, process, message, the ids, any extras."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
        self.secrets = _configured_secrets()

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class TextFormatter(logging.Formatter):
    """A line for a person: time, level, logger, message, then the ids it lacks."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.secrets = _configured_secrets()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for name in ("request_id", "job_id"):
            value = getattr(record, name, None)
            if value and f"{name}=" not in record.getMessage():
                line += f" {name}={value}"
        return redact(line, self.secrets)


def dict_config(log_format: str, level: str | int = "INFO") -> dict[str, Any]:
    """The `dictConfig` (also gunicorn's `logconfig_dict`): one stderr handler for every logger."""
    formatter = JsonLineFormatter if log_format == "json" else TextFormatter
    through_root = {"level": "INFO", "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"line": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": through_root,
            "gunicorn.access": through_root,
            "celery": {"handlers": [], "propagate": True},
            "celery.task": {"handlers": [], "propagate": True},
            "celery.redirected": {"handlers": [], "propagate": True},
        },
    }


def configure(log_format: str, level: str | int = "INFO") -> None:
    """Sets up this process's logging (`dict_config`), warnings included."""
    logging.config.dictConfig(dict_config(log_format, level))
    logging.captureWarnings(True)
