"""Service settings, declared once, read strictly from the environment by every process."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_origin

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from models.whisper_languages import WHISPER_LANGUAGES


class SettingError(ValueError):
    """A setting in the environment is malformed; the message names the setting."""


def parse_int(name: str, raw: str, *, minimum: int | None = None) -> int:
    """Parses the whole-number variable `name` (launcher, gunicorn); SettingError when malformed."""
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise SettingError(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value}")
    return value


def usable_cores() -> int:
    """Returns the number of cores this process may run on (cgroup/affinity aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_HOST_NAME = re.compile(r"^(\*|\[[0-9a-f:.]+\]|[a-z0-9_.-]+)$")
_ORIGIN = re.compile(r"^https?://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?$")
# A bearer token as RFC 6750 allows it, and long enough not to be guessed.
_METRICS_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]{16,}=*$")
_METRICS_ADDRESS = re.compile(
    r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):)?(?P<port>[^:]+)$"
)
# Pairs of settings, the first never above the second (and below it, when strict).
_ORDERED = (
    ("min_audio_sample_rate", "max_audio_sample_rate", False),
    ("default_max_tokens", "max_tokens_limit", False),
    ("task_soft_time_limit", "task_time_limit", True),
    ("task_time_limit", "broker_visibility_timeout", True),
    ("audio_ttl_seconds", "job_ttl_seconds", False),
)


def _after(name: str, seconds: int) -> Callable[[dict[str, Any]], int]:
    """A default `seconds` above the setting `name` (its error is the one reported if malformed)."""
    return lambda data: int(data.get(name, 0)) + seconds


# A network with host bits set (10.1.2.3/8) is the network around it (strict=False).
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(lambda entry: ipaddress.ip_network(entry, strict=False)),
]


class Settings(BaseSettings):
    """Every setting of the service; each variable is its field's name in capitals."""

    model_config = SettingsConfigDict(
        frozen=True,
        use_attribute_docstrings=True,
        env_ignore_empty=True,
        enable_decoding=False,
        allow_inf_nan=False,
        extra="ignore",
    )

    data_dir: Annotated[Path, AfterValidator(Path.resolve)] = Path("var")
    """Uploads and replies (STORAGE_BACKEND=local), assembled models, the embedded Redis's AOF."""
    database_url: str = Field(
        default_factory=lambda d: f"sqlite:///{d['data_dir'] / 'voicechat.db'}"
    )
    """SQLAlchemy URL (default: DATA_DIR/voicechat.db); e.g. `postgresql+psycopg://u:p@host/db`."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Celery's broker, event streams and worker heartbeats."""
    storage_backend: Literal["local", "database"] = "local"
    """Where uploads and replies live: DATA_DIR (one host) or the database (every host)."""
    worker_role: Literal["jobs", "maintenance"] = "jobs"
    """What a worker process does: run jobs (loads the models) or the maintenance queue (none)."""

    max_upload_mb: int = Field(25, ge=1)
    """Request body limit, in megabytes."""
    max_audio_seconds: float = Field(600.0, ge=1.0)
    """Longest recording."""
    max_audio_channels: int = Field(2, ge=1, le=8)
    """Most channels a recording may have (the worker mixes them down to mono)."""
    min_audio_sample_rate: int = Field(8_000, ge=1, le=768_000)
    """Lowest sample rate a recording may have, in Hz."""
    max_audio_sample_rate: int = Field(192_000, ge=1, le=768_000)
    """Highest sample rate a recording may have, in Hz (not below MIN_AUDIO_SAMPLE_RATE)."""
    max_text_chars: int = Field(4000, ge=1)
    """Longest text of a text job."""
    max_system_chars: int = Field(4000, ge=1)
    """Longest system prompt."""
    max_chat_chars: int = Field(200_000, ge=1)
    """Characters of all the messages of one chat completion together."""
    default_max_tokens: int = Field(200, ge=1)
    """Reply tokens when a request names none (not above MAX_TOKENS_LIMIT)."""
    max_tokens_limit: int = Field(1024, ge=1)
    """Most reply tokens a request may ask for."""
    default_temperature: float = Field(0.3, ge=0.0)
    """Sampling temperature when a request names none."""
    max_wait_seconds: int = Field(60, ge=1, le=3600)
    """Cap on `Prefer: wait=N`."""
    openai_wait_seconds: int = Field(60, ge=1, le=3600)
    """Longest a synchronous OpenAI route waits for its job (api/wait_bound.py, issue 20)."""
    max_held_requests: int = Field(500, ge=0, le=10_000)
    """Requests one API process holds open at once (streams, waits); 0 holds none."""
    follower_turns: int = Field(4, ge=1, le=1000)
    """Event streams one API process starts at once; the next wait their turn (api/follow.py)."""
    follower_turn_seconds: float = Field(0.5, gt=0, le=60)
    """Longest an event stream waits for its turn to start, then `503` `server_busy`."""

    stt_engine: str = "faster-whisper"
    """`faster-whisper`, `openai-whisper`, or `module:Class`."""
    whisper_model_dir: str = ""
    """faster-whisper: a CTranslate2 model folder (default: the packaged Whisper base)."""
    whisper_language: str = "en"
    """One of Whisper's language codes, or `auto` (detects per recording, at an extra pass)."""
    whisper_model: str = ""
    """openai-whisper: a model name or `.pt` checkpoint (default: the packaged Whisper base)."""
    whisper_device: str = "auto"
    """openai-whisper: `auto` (CUDA when torch sees a GPU), `cuda` or `cpu`."""
    llm_engine: str = "llama-cpp"
    """`llama-cpp`, `openai`, `mlc`, or `module:Class`."""
    llm_preset: Literal["quality", "fast"] = "quality"
    """llama-cpp: the packaged model: `quality` (Qwen2.5-Coder-1.5B) or `fast` (SmolLM2-135M)."""
    llm_model_path: str = ""
    """llama-cpp: any chat GGUF, instead of the preset's packaged model."""
    llm_model: str = ""
    """openai: the model to ask for (default: the first listed); mlc: the model, required."""
    llm_base_url: str = ""
    """openai: the server's API root, `http(s)://host:port/v1`."""
    llm_api_key: SecretStr = SecretStr("")
    """openai: the server's API key (sent as `none` when unset)."""
    llm_device: str = "auto"
    """mlc: `auto`, `cuda` or `cuda:N`."""
    llm_tokenizer_path: str = ""
    """openai, mlc: the model's `tokenizer.json` (or its folder) for exact token counts."""
    mlc_mode: str = "local"
    """mlc: `interactive` (least memory), `local` or `server`."""
    llm_context_tokens: int = Field(2048, ge=256)
    """The window prompt and reply must fit."""
    llm_threads: int = Field(default_factory=usable_cores, ge=1)
    """CPU threads of the engines (default: the cores this process may use)."""
    tts_engine: str = "piper"
    """`piper`, `coqui`, or `module:Class`."""
    tts_voice: str = "en_US-joe-medium"
    """The default voice (one of TTS_VOICES)."""
    tts_voices: tuple[str, ...] = Field(default_factory=lambda data: (data["tts_voice"],))
    """Comma-separated voices clients may choose (default: TTS_VOICE alone)."""
    piper_voice_dir: str = ""
    """piper: a folder of `NAME.onnx` + `NAME.onnx.json` (default: the packaged voice)."""
    coqui_model: str = ""
    """coqui: a Coqui model name, e.g. `tts_models/en/ljspeech/vits`."""
    coqui_model_path: str = ""
    """coqui: a checkpoint of your own."""
    coqui_config_path: str = ""
    """coqui: the checkpoint's `config.json` (default: beside the checkpoint)."""
    tts_speaker: str = ""
    """coqui: the speaker of a multi-speaker model (default: its first)."""
    tts_language: str = ""
    """coqui: the language of a multilingual model."""
    tts_device: str = "auto"
    """coqui: as WHISPER_DEVICE."""

    task_soft_time_limit: int = Field(300, ge=1)
    """Seconds after which a job fails with `timeout`."""
    task_time_limit: int = Field(default_factory=_after("task_soft_time_limit", 30), ge=1)
    """Seconds after which a job's child is killed (default: TASK_SOFT_TIME_LIMIT + 30)."""
    # Redis hands an unacknowledged message to another worker after the visibility timeout:
    # shorter than the hard limit, a job still running would be delivered twice.
    broker_visibility_timeout: int = Field(default_factory=_after("task_time_limit", 60), ge=1)
    """Seconds before Redis redelivers an unacknowledged job (default: TASK_TIME_LIMIT + 60)."""
    worker_heartbeat_seconds: int = Field(10, ge=1)
    """Readiness key and job lease refresh; both expire after 3 times this."""
    max_attempts: int = Field(3, ge=1)
    """Claims of one job before it fails with `worker_lost`."""
    reconcile_interval_seconds: int = Field(10, ge=1)
    """How often each worker's reconciler runs."""
    reconcile_queued_after_seconds: int = Field(30, ge=1)
    """A job queued this long that was never sent is published again."""
    events_ttl_seconds: int = Field(86_400, ge=60)
    """How long a job's event stream is kept after its last event."""

    rate_limit_per_minute: int = Field(600, ge=0)
    """Requests per minute per caller on `/v1` routes; 0: no limit."""
    max_unfinished_jobs: int = Field(100, ge=0)
    """Jobs one caller may have queued or running; 0: no limit."""
    max_queue_depth: int = Field(1000, ge=0)
    """Jobs waiting for a worker past which a submit is `503 queue_full`; 0: no limit."""
    idempotency_ttl_seconds: int = Field(86_400, ge=86_400)
    """How long an `Idempotency-Key` is remembered (at least a day, as Stripe keeps them)."""

    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    """Comma-separated host names the API answers for, any port (`*`: any)."""
    cors_origins: tuple[str, ...] = ()
    """Comma-separated browser origins (`https://app.example:8443`) given CORS."""
    flower_basic_auth: SecretStr = SecretStr("")
    """Flower's `user:password` (comma-separate pairs); unset, the launcher makes one."""

    webhook_allowed_networks: tuple[Network, ...] = ()
    """Comma-separated CIDRs of private and loopback networks webhooks may reach."""
    webhook_secret: SecretStr = SecretStr("")
    """`whsec_` + base64 of 24-64 random bytes: signs the webhooks of jobs of an open service."""
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    """Delivery attempts of one webhook event."""
    webhook_backoff_seconds: tuple[Annotated[int, Field(ge=0, le=86_400)], ...] = (
        5,
        30,
        120,
        600,
        1800,
    )
    """Comma-separated waits (0-86400) before the 2nd, 3rd, ... attempt; the last repeats."""
    webhook_timeout_seconds: int = Field(10, ge=1, le=60)
    """Connect and read timeout of one webhook attempt."""

    audio_ttl_seconds: int = Field(86_400, ge=60)
    """A finished job's recording and spoken reply are deleted this long after it finished."""
    # Idempotency keys live as long as their job's row, and must be kept at least a day (issue 12).
    job_ttl_seconds: int = Field(30 * 86_400, ge=86_400)
    """A finished job's row and all it holds are deleted this long after (>= AUDIO_TTL_SECONDS)."""
    conversation_ttl_seconds: int = Field(30 * 86_400, ge=60)
    """A conversation idle this long, with no job unfinished, is deleted with its turns."""
    retention_interval_seconds: int = Field(300, ge=1, le=86_400)
    """How often Celery beat sends the retention sweep to the maintenance worker."""

    log_format: Literal["json", "text"] = "json"
    """Every process's log lines: one JSON object a line, or text for a person."""
    metrics_token: SecretStr = SecretStr("")
    """Set (16+ characters): `/metrics` needs it as a Bearer token; unset: local callers only."""
    worker_metrics_host: str = Field("127.0.0.1", validation_alias="worker_metrics_port")
    """The host of WORKER_METRICS_PORT."""
    worker_metrics_port: int = Field(0, ge=0, le=65_535)
    """`PORT` (on 127.0.0.1) or `HOST:PORT` where a job worker serves its figures; 0: none."""

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

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
        """Settings from `environ` (`os.environ` when omitted); blank means the default, and a
        malformed variable a SettingError naming it."""
        variables = _Variables(cls, os.environ if environ is None else environ)
        try:
            return cls(**variables())
        except ValidationError as error:
            # A default derived from a malformed setting is not a second error.
            errors = [e for e in error.errors() if e["type"] != "default_factory_not_called"]
            raise SettingError("; ".join(map(_described, errors))) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `from_env` passes: the variables it was given, never a dotenv file."""
        return (init_settings,)

    @field_validator("whisper_language")
    @classmethod
    def _whisper_language(cls, value: str) -> str:
        if value != "auto" and value not in WHISPER_LANGUAGES:
            raise ValueError("must be auto or one of Whisper's language codes")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _listed(cls, value: Any, info: ValidationInfo) -> Any:
        """A tuple's variable is comma-separated (never JSON): its entries, blank ones left out,
        names in lower case."""
        listed = get_origin(cls.model_fields[str(info.field_name)].annotation) is tuple
        if not (listed and isinstance(value, str)):
            return value
        entries = (entry.strip() for entry in value.split(",") if entry.strip())
        return tuple(e if info.field_name == "tts_voices" else e.lower() for e in entries)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not _HOST_NAME.match(host):
                raise ValueError("entries are host names without a port ([::1] for IPv6) or *")
        if not hosts:
            raise ValueError("must name at least one host (or *)")
        return hosts

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in (origins := tuple(origin.rstrip("/") for origin in origins)):
            if not _ORIGIN.match(origin):
                raise ValueError("entries are origins like https://app.example:8443")
        return origins

    @field_validator("flower_basic_auth")
    @classmethod
    def _flower(cls, value: SecretStr) -> SecretStr:
        pairs = value.get_secret_value()
        for user, _, password in (pair.partition(":") for pair in pairs.split(",") if pairs):
            if not user.strip() or not password:
                raise ValueError("must be user:password (comma-separate pairs)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr) -> SecretStr:
        """Standard Webhooks' secret: `whsec_` and the base64 of 24 to 64 random bytes."""
        raw = value.get_secret_value()
        if not raw:
            return value
        if not raw.startswith("whsec_"):
            raise ValueError("WEBHOOK_SECRET must start with whsec_")
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("WEBHOOK_SECRET must be whsec_ and base64 text") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"WEBHOOK_SECRET must hold 24 to 64 bytes, got {len(key)}")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and not _METRICS_TOKEN.match(value.get_secret_value()):
            raise ValueError(
                "must be at least 16 characters of A-Z a-z 0-9 . _ ~ + / - "
                '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        return value

    @field_validator("worker_metrics_host", "worker_metrics_port", mode="before")
    @classmethod
    def _metrics_address(cls, value: Any, info: ValidationInfo) -> Any:
        """WORKER_METRICS_PORT's `HOST:` part for the host, the rest for the port."""
        parts = _METRICS_ADDRESS.match(value) if isinstance(value, str) else None
        if isinstance(value, str) and parts is None:
            raise ValueError("must be PORT or HOST:PORT")
        if parts is None:
            return value
        if info.field_name == "worker_metrics_port":
            return parts["port"]
        return (parts["host"] or "127.0.0.1").strip("[]")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.tts_voice not in self.tts_voices:
            raise ValueError(f"TTS_VOICE {self.tts_voice!r} must be one of TTS_VOICES")
        for low, high, strict in _ORDERED:
            first, second = getattr(self, low), getattr(self, high)
            if first > second or (strict and first == second):
                bound = "below" if strict else "at most"
                raise ValueError(f"{low.upper()} must be {bound} {high.upper()}")
        return self


class _Variables(EnvSettingsSource):
    """The given variables in capitals, stripped, instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = {name: value.strip() for name, value in environ.items() if name.isupper()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self.environ, False, self.env_ignore_empty, self.env_parse_none_str)


def _described(error: Any) -> str:
    """One of pydantic's errors as the variable and what is wrong (never a secret's value)."""
    name = str(error["loc"][0]).upper() if error["loc"] else ""
    text = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    field = Settings.model_fields.get(name.lower())
    if field is not None and field.annotation is not SecretStr and isinstance(error["input"], str):
        text += f", got {error['input']!r}"
    return text if text.startswith(name) else f"{name}: {text}"
