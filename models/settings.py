"""Service settings read strictly from the environment, shared by the API, worker and launcher."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.whisper_languages import WHISPER_LANGUAGES

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingError(ValueError):
    """A setting in the environment is malformed; the message names the setting."""


def parse_bool(name: str, raw: str) -> bool:
    """Parses a boolean setting, refusing anything but the usual spellings.

    Args:
        name: The setting's name, for the error message.
        raw: The raw text.

    Returns:
        The boolean value.

    Raises:
        SettingError: The text is not a boolean.
    """
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingError(f"{name} must be one of true/false/1/0/yes/no/on/off, got {raw!r}")


def parse_int(
    name: str, raw: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Parses a whole-number setting within optional bounds.

    Raises:
        SettingError: The text is not a whole number or is out of bounds.
    """
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{name} must be at most {maximum}, got {value}")
    return value


def parse_float(name: str, raw: str, *, minimum: float | None = None) -> float:
    """Parses a decimal setting.

    Raises:
        SettingError: The text is not a finite number or is below the minimum.
    """
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingError(f"{name} must be finite, got {raw!r}")
    if minimum is not None and value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value}")
    return value


def usable_cores() -> int:
    """Returns the number of cores this process may run on (cgroup/affinity aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; see the README's configuration table."""

    data_dir: Path
    database_url: str
    redis_url: str
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_audio_channels: int = 2
    min_audio_sample_rate: int = 8_000
    max_audio_sample_rate: int = 192_000
    max_text_chars: int = 4000
    max_system_chars: int = 4000
    max_chat_chars: int = 200_000
    default_max_tokens: int = 200
    max_tokens_limit: int = 1024
    default_temperature: float = 0.3
    stt_engine: str = "faster-whisper"
    whisper_model_dir: str = ""
    whisper_language: str = "en"
    whisper_model: str = ""
    whisper_device: str = "auto"
    llm_engine: str = "llama-cpp"
    # The packaged GGUF when LLM_MODEL_PATH is unset (worker/engines/model_files.py's PRESETS).
    llm_preset: str = "quality"
    llm_model_path: str = ""
    llm_model: str = ""
    llm_base_url: str = ""
    llm_api_key: str = field(default="", repr=False)
    llm_device: str = "auto"
    llm_tokenizer_path: str = ""
    mlc_mode: str = "local"
    llm_context_tokens: int = 2048
    llm_threads: int = field(default_factory=usable_cores)
    tts_engine: str = "piper"
    tts_voice: str = "en_US-joe-medium"
    tts_voices: tuple[str, ...] = ("en_US-joe-medium",)
    piper_voice_dir: str = ""
    coqui_model: str = ""
    coqui_model_path: str = ""
    coqui_config_path: str = ""
    tts_speaker: str = ""
    tts_language: str = ""
    tts_device: str = "auto"
    task_soft_time_limit: int = 300
    task_time_limit: int = 330
    broker_visibility_timeout: int = 390
    worker_heartbeat_seconds: int = 10
    max_attempts: int = 3
    reconcile_interval_seconds: int = 10
    reconcile_queued_after_seconds: int = 30
    events_ttl_seconds: int = 86400
    max_wait_seconds: int = 60
    # The longest a synchronous OpenAI route waits for its job (api/wait_bound.py, issue 20).
    openai_wait_seconds: int = 60
    max_held_requests: int = 500
    storage_backend: str = "local"
    # Fair sharing (api/limits.py, api/idempotency.py); 0 turns a limit off.
    rate_limit_per_minute: int = 600
    max_unfinished_jobs: int = 100
    max_queue_depth: int = 1000
    idempotency_ttl_seconds: int = 86400
    # Who may call (api/origins.py): the Host names served, the browser origins given CORS.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    cors_origins: tuple[str, ...] = ()
    # Flower's user:password pairs (scripts/launch.py); generated into DATA_DIR when unset.
    flower_basic_auth: str = field(default="", repr=False)
    # Private and loopback networks webhooks may reach (link-local and the like never: issue 20).
    webhook_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    webhook_max_attempts: int = 5
    webhook_backoff_seconds: tuple[int, ...] = (5, 30, 120, 600, 1800)
    webhook_timeout_seconds: int = 10
    # Retention (worker/retention.py), run by the maintenance worker every interval.
    audio_ttl_seconds: int = 86_400
    job_ttl_seconds: int = 30 * 86_400
    conversation_ttl_seconds: int = 30 * 86_400
    retention_interval_seconds: int = 300
    # What a worker process does: run jobs (loads the models) or the maintenance queue (none).
    worker_role: str = "jobs"
    # Observability (models/logging_config.py, models/metrics.py, api/prometheus.py).
    log_format: str = "json"
    metrics_token: str = field(default="", repr=False)
    # A worker's own /metrics server (WORKER_METRICS_PORT, `[host:]port`); port 0: none.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 0

    @property
    def lease_seconds(self) -> int:
        """How long a claim on a running job lasts unless the worker's heartbeat renews it."""
        return self.worker_heartbeat_seconds * 3

    @property
    def worker_hold_limit_seconds(self) -> int:
        """The longest a worker's database session may sit inside a transaction (models/db.py):
        longer than any job may run."""
        return self.task_time_limit + self.lease_seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Builds settings from environment variables, strictly.

        Each setting's variable is its field's name in capitals (but `MAX_UPLOAD_MB`, in
        megabytes); an unset or blank variable means the field's default.

        Args:
            environ: The variables to read; `os.environ` when omitted.

        Returns:
            The settings.

        Raises:
            SettingError: A variable is malformed; the message names it.
        """
        env = _Environment(os.environ if environ is None else environ)
        data_dir = Path(env.raw("DATA_DIR") or "var").resolve()
        return cls(
            data_dir=data_dir,
            database_url=env.text("database_url", f"sqlite:///{data_dir / 'voicechat.db'}"),
            redis_url=env.text("redis_url", "redis://127.0.0.1:6379/0"),
            **_request_limits(env),
            **_engine_choices(env),
            **_delivery(env),
            **_fair_sharing(env),
            storage_backend=_choice(env, "storage_backend", ("local", "database")),
            **_access(env),
            **_webhooks(env),
            **_retention(env),
            worker_role=_choice(env, "worker_role", ("jobs", "maintenance")),
            **_observability(env),
        )


# Settings read as plain text, the field's default when unset: engines, models and devices.
_ENGINE_TEXT = (
    "stt_engine",
    "whisper_model_dir",
    "whisper_language",
    "whisper_model",
    "whisper_device",
    "llm_engine",
    "llm_model_path",
    "llm_model",
    "llm_base_url",
    "llm_api_key",
    "llm_device",
    "llm_tokenizer_path",
    "mlc_mode",
    "tts_engine",
    "piper_voice_dir",
    "coqui_model",
    "coqui_model_path",
    "coqui_config_path",
    "tts_speaker",
    "tts_language",
    "tts_device",
)


class _Environment:
    """Reads settings from environment variables named after their fields, in capitals."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}

    def raw(self, variable: str) -> str:
        """The variable's text, stripped; empty when unset."""
        return self.environ.get(variable, "").strip()

    def text(self, name: str, default: str | None = None) -> str:
        """A text setting; `default` overrides the field's own."""
        value = self.raw(name.upper())
        return value or str(self.defaults[name] if default is None else default)

    def whole(
        self, name: str, default: int | None = None, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        """A whole-number setting within bounds; `default` overrides the field's own."""
        raw = self.raw(name.upper())
        if not raw:
            return int(self.defaults[name] if default is None else default)
        return parse_int(name.upper(), raw, minimum=minimum, maximum=maximum)

    def decimal(self, name: str, *, minimum: float) -> float:
        """A decimal setting at or above `minimum`."""
        raw = self.raw(name.upper())
        if not raw:
            return float(self.defaults[name])
        return parse_float(name.upper(), raw, minimum=minimum)


def _choice(env: _Environment, name: str, choices: tuple[str, ...]) -> str:
    """A text setting that must be one of `choices`."""
    value = env.text(name)
    if value not in choices:
        raise SettingError(f"{name.upper()} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _request_limits(env: _Environment) -> dict[str, Any]:
    """What a request may hold and ask for, and the reply's defaults."""
    max_tokens_limit = env.whole("max_tokens_limit")
    # The one setting whose variable is in other units than its field.
    upload_mb = env.raw("MAX_UPLOAD_MB")
    max_upload_bytes = (
        parse_int("MAX_UPLOAD_MB", upload_mb, minimum=1) * 1024 * 1024
        if upload_mb
        else env.defaults["max_upload_bytes"]
    )
    return {
        "max_upload_bytes": max_upload_bytes,
        "max_audio_seconds": env.decimal("max_audio_seconds", minimum=1.0),
        **_audio_shape(env),
        "max_text_chars": env.whole("max_text_chars"),
        "max_system_chars": env.whole("max_system_chars"),
        "max_chat_chars": env.whole("max_chat_chars"),
        "default_max_tokens": env.whole("default_max_tokens", maximum=max_tokens_limit),
        "max_tokens_limit": max_tokens_limit,
        "default_temperature": env.decimal("default_temperature", minimum=0.0),
        "max_wait_seconds": env.whole("max_wait_seconds", maximum=3600),
        "openai_wait_seconds": env.whole("openai_wait_seconds", maximum=3600),
        "max_held_requests": env.whole("max_held_requests", minimum=0, maximum=10_000),
    }


def _audio_shape(env: _Environment) -> dict[str, Any]:
    """The channels and sample rates an uploaded recording may have."""
    low = env.whole("min_audio_sample_rate", maximum=768_000)
    high = env.whole("max_audio_sample_rate", maximum=768_000)
    if low > high:
        raise SettingError("MIN_AUDIO_SAMPLE_RATE must not be above MAX_AUDIO_SAMPLE_RATE")
    return {
        "max_audio_channels": env.whole("max_audio_channels", maximum=8),
        "min_audio_sample_rate": low,
        "max_audio_sample_rate": high,
    }


def _engine_choices(env: _Environment) -> dict[str, Any]:
    """The engine of each stage, its model and device, and the voices offered."""
    voice = env.text("tts_voice")
    voices = tuple(v.strip() for v in env.text("tts_voices", voice).split(",") if v.strip())
    if voice not in voices:
        raise SettingError(f"TTS_VOICE {voice!r} must be one of TTS_VOICES {list(voices)}")
    language = env.text("whisper_language")
    if language != "auto" and language not in WHISPER_LANGUAGES:
        raise SettingError(
            f"WHISPER_LANGUAGE must be auto or one of Whisper's language codes, got {language!r}"
        )
    return {
        **{name: env.text(name) for name in _ENGINE_TEXT},
        "llm_preset": _choice(env, "llm_preset", ("quality", "fast")),
        "llm_context_tokens": env.whole("llm_context_tokens", minimum=256),
        "llm_threads": env.whole("llm_threads", usable_cores()),
        "tts_voice": voice,
        "tts_voices": voices,
    }


def _delivery(env: _Environment) -> dict[str, Any]:
    """Time limits, leases, retries and the reconciler's timer of job delivery."""
    soft = env.whole("task_soft_time_limit")
    hard = env.whole("task_time_limit", soft + 30)
    if hard <= soft:
        raise SettingError("TASK_TIME_LIMIT must be greater than TASK_SOFT_TIME_LIMIT")
    # Redis hands an unacknowledged message to another worker after the visibility timeout:
    # shorter than the hard limit, a job still running would be delivered twice.
    visibility = env.whole("broker_visibility_timeout", hard + 60)
    if visibility <= hard:
        raise SettingError("BROKER_VISIBILITY_TIMEOUT must be greater than TASK_TIME_LIMIT")
    return {
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "broker_visibility_timeout": visibility,
        "worker_heartbeat_seconds": env.whole("worker_heartbeat_seconds"),
        "max_attempts": env.whole("max_attempts"),
        "reconcile_interval_seconds": env.whole("reconcile_interval_seconds"),
        "reconcile_queued_after_seconds": env.whole("reconcile_queued_after_seconds"),
        "events_ttl_seconds": env.whole("events_ttl_seconds", minimum=60),
    }


def _fair_sharing(env: _Environment) -> dict[str, Any]:
    """Each caller's share: requests per minute, unfinished jobs, the queue's depth, and how long
    an Idempotency-Key is remembered (at least a day, as Stripe keeps them)."""
    return {
        "rate_limit_per_minute": env.whole("rate_limit_per_minute", minimum=0),
        "max_unfinished_jobs": env.whole("max_unfinished_jobs", minimum=0),
        "max_queue_depth": env.whole("max_queue_depth", minimum=0),
        "idempotency_ttl_seconds": env.whole("idempotency_ttl_seconds", minimum=86400),
    }


_HOST_NAME = re.compile(r"^(\*|\[[0-9a-f:.]+\]|[a-z0-9_.-]+)$")
_ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?$")


def _listed(env: _Environment, name: str) -> tuple[str, ...]:
    """A comma-separated setting as its stripped, lower-case entries; the field's default when
    unset."""
    raw = env.raw(name.upper())
    if not raw:
        return tuple(env.defaults[name])
    return tuple(entry.strip().lower() for entry in raw.split(",") if entry.strip())


def _access(env: _Environment) -> dict[str, Any]:
    """The Host names and browser origins the API answers, and Flower's credentials."""
    hosts = _listed(env, "allowed_hosts")
    for host in hosts:
        if not _HOST_NAME.match(host):
            raise SettingError(
                f"ALLOWED_HOSTS entries are host names without a port ([::1] for IPv6) or *, "
                f"got {host!r}"
            )
    if not hosts:
        raise SettingError("ALLOWED_HOSTS must name at least one host (or *)")
    origins = tuple(origin.rstrip("/") for origin in _listed(env, "cors_origins"))
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise SettingError(
                f"CORS_ORIGINS entries are origins like https://app.example:8443, got {origin!r}"
            )
    flower = env.raw("FLOWER_BASIC_AUTH")
    for pair in flower.split(",") if flower else ():
        user, _, password = pair.partition(":")
        if not user.strip() or not password:
            raise SettingError("FLOWER_BASIC_AUTH must be user:password (comma-separate pairs)")
    return {"allowed_hosts": hosts, "cors_origins": origins, "flower_basic_auth": flower}


# Standard Webhooks' secrets: `whsec_` and the base64 of 24 to 64 random bytes.
WEBHOOK_SECRET_PREFIX = "whsec_"


def parse_webhook_secret(name: str, raw: str) -> bytes:
    """Decodes a `whsec_` secret to its key bytes.

    Raises:
        SettingError: The text is not `whsec_` and the base64 of 24 to 64 bytes.
    """
    if not raw.startswith(WEBHOOK_SECRET_PREFIX):
        raise SettingError(f"{name} must start with {WEBHOOK_SECRET_PREFIX}")
    try:
        key = base64.b64decode(raw[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise SettingError(f"{name} must be whsec_ and base64 text") from None
    if not 24 <= len(key) <= 64:
        raise SettingError(f"{name} must hold 24 to 64 bytes, got {len(key)}")
    return key


def _webhooks(env: _Environment) -> dict[str, Any]:
    """Where webhooks may go, what signs them, and how their delivery is retried."""
    networks = []
    for entry in _listed(env, "webhook_allowed_networks"):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise SettingError(
                f"WEBHOOK_ALLOWED_NETWORKS entries are CIDRs like 10.0.0.0/8, got {entry!r}"
            ) from None
    secret = env.raw("WEBHOOK_SECRET")
    if secret:
        parse_webhook_secret("WEBHOOK_SECRET", secret)
    raw_backoff = env.raw("WEBHOOK_BACKOFF_SECONDS")
    backoff = (
        tuple(
            parse_int("WEBHOOK_BACKOFF_SECONDS", part, minimum=0, maximum=86_400)
            for part in raw_backoff.split(",")
        )
        if raw_backoff
        else env.defaults["webhook_backoff_seconds"]
    )
    return {
        "webhook_allowed_networks": tuple(networks),
        "webhook_secret": secret,
        "webhook_max_attempts": env.whole("webhook_max_attempts", maximum=20),
        "webhook_backoff_seconds": backoff,
        "webhook_timeout_seconds": env.whole("webhook_timeout_seconds", maximum=60),
    }


# Idempotency keys live as long as their job's row, and must be kept at least a day (issue 12).
_SHORTEST_JOB_TTL = 86_400


def _retention(env: _Environment) -> dict[str, Any]:
    """How long uploads, replies, job rows and conversations are kept, and how often retention
    runs (worker/retention.py)."""
    audio = env.whole("audio_ttl_seconds", minimum=60)
    jobs = env.whole("job_ttl_seconds", minimum=_SHORTEST_JOB_TTL)
    if jobs < audio:
        raise SettingError("JOB_TTL_SECONDS must not be below AUDIO_TTL_SECONDS")
    return {
        "audio_ttl_seconds": audio,
        "job_ttl_seconds": jobs,
        "conversation_ttl_seconds": env.whole("conversation_ttl_seconds", minimum=60),
        "retention_interval_seconds": env.whole("retention_interval_seconds", maximum=86_400),
    }


# A bearer token as RFC 6750 allows it, and long enough not to be guessed.
_METRICS_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]{16,}=*$")
_METRICS_ADDRESS = re.compile(
    r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):)?(?P<port>[^:]+)$"
)


def _observability(env: _Environment) -> dict[str, Any]:
    """How logs are written, who may read /metrics, and where a worker serves its own."""
    token = env.raw("METRICS_TOKEN")
    if token and not _METRICS_TOKEN.match(token):
        raise SettingError(
            "METRICS_TOKEN must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / - "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    address = env.raw("WORKER_METRICS_PORT")
    host, port = env.defaults["worker_metrics_host"], 0
    if address:
        parts = _METRICS_ADDRESS.match(address)
        if parts is None:
            raise SettingError(f"WORKER_METRICS_PORT must be PORT or HOST:PORT, got {address!r}")
        host = (parts["host"] or host).strip("[]")
        port = parse_int("WORKER_METRICS_PORT", parts["port"], minimum=1, maximum=65_535)
    return {
        "log_format": _choice(env, "log_format", ("json", "text")),
        "metrics_token": token,
        "worker_metrics_host": host,
        "worker_metrics_port": port,
    }
