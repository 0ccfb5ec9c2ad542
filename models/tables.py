"""The tables and job states: the single source of truth for every submitted prompt."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any, TypedDict

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UTC = timezone.utc  # noqa: UP017 - the Jetson MLC images run Python 3.10, which has no datetime.UTC


class Message(TypedDict):
    """One chat message in OpenAI's shape: a job's history and a conversation's turns."""

    role: str
    content: str


class JobStatus(str, Enum):
    """Where a job is in its life; the last three are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """Whether the job can no longer change."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Stage(str, Enum):
    """The pipeline stage a running job is in."""

    TRANSCRIBING = "transcribing"
    GENERATING = "generating"
    SYNTHESIZING = "synthesizing"


class ReplyFormat(str, Enum):
    """How the client wants the answer back."""

    TEXT = "text"
    VOICE = "voice"


class Operation(str, Enum):
    """What the pipeline does with the prompt."""

    CHAT = "chat"  # prompt (text or transcribed) → reply, as text or voice
    TRANSCRIBE = "transcribe"  # recording → transcript only
    SPEAK = "speak"  # text → speech only


class InputKind(str, Enum):
    """What the client sent as the prompt."""

    TEXT = "text"
    AUDIO = "audio"


def utcnow() -> datetime:
    """Returns the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """Returns a fresh, unguessable job id."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC and hands them back aware, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # SQLite keeps no zone: the value was stored as UTC by process_bind_param.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base whose metadata Alembic's env.py binds to."""


class ApiKey(Base):
    """A client's key (`Authorization: Bearer <secret>`); only the secret's SHA-256 is kept: the
    secret is 32 random bytes, so a fast hash is safe (as GitHub does for its tokens)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    name: Mapped[str] = mapped_column(String(100))
    # The secret's first characters, shown in listings so a key can be recognised.
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Signs this key's webhook deliveries (Standard Webhooks' `whsec_` secret).
    webhook_secret: Mapped[str] = mapped_column(String(64))
    # Per-key overrides of RATE_LIMIT_PER_MINUTE and MAX_UNFINISHED_JOBS; None means the setting.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    max_unfinished_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Job(Base):
    """One submitted prompt and everything the pipeline made of it."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_api_key_id_created_at_id", "api_key_id", "created_at", "id"),
        Index("ix_jobs_api_key_id_status", "api_key_id", "status"),
        Index("ix_jobs_finished_at", "finished_at"),
        # Retention's next jobs to expire, without walking the ones it expired already.
        Index(
            "ix_jobs_unexpired_finished_at",
            "finished_at",
            postgresql_where=text("expired_at IS NULL"),
            sqlite_where=text("expired_at IS NULL"),
        ),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_done_announced_status", "done_announced", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    # The key that made the job, the only one that sees it; None when the service runs open.
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None
    )
    operation: Mapped[str] = mapped_column(
        String(16), default=Operation.CHAT.value, server_default=Operation.CHAT.value
    )
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), default=None, index=True
    )
    # Earlier turns sent with the prompt (OpenAI's `messages`), oldest first.
    history: Mapped[list[Message] | None] = mapped_column(JSON, default=None)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(String(16), default=None)
    reply_format: Mapped[str] = mapped_column(String(8))
    input_kind: Mapped[str] = mapped_column(String(8))
    input_text: Mapped[str | None] = mapped_column(Text, default=None)
    input_audio_file: Mapped[str | None] = mapped_column(String(64), default=None)
    input_audio_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    transcript: Mapped[str | None] = mapped_column(Text, default=None)
    transcript_language: Mapped[str | None] = mapped_column(String(16), default=None)
    transcript_segments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    reply_text: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    finish_reason: Mapped[str | None] = mapped_column(String(16), default=None)
    reply_audio_file: Mapped[str | None] = mapped_column(String(64), default=None)
    reply_audio_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    transcribe_s: Mapped[float | None] = mapped_column(Float, default=None)
    generate_s: Mapped[float | None] = mapped_column(Float, default=None)
    synthesize_s: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Whether the job's `done` event is in its event log: set after the terminal transition's
    # publish, so the reconciler can announce the end of a job whose announcer died first.
    done_announced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Asked to stop (`POST /v1/jobs/{id}/cancel`; see `transitions.request_cancel`).
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When retention deleted the job's recording and reply audio (the row and text stay).
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # Read-only: the rows are written by the delivery task and removed with the job (CASCADE).
    webhook_deliveries: Mapped[list[WebhookDelivery]] = relationship(
        viewonly=True, order_by="WebhookDelivery.id"
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)


class Conversation(Base):
    """A chat whose turns are kept so that each new prompt is answered in context."""

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), default=None, index=True
    )
    system: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Turn(Base):
    """One message of a conversation; a voice prompt is kept as its transcript."""

    __tablename__ = "turns"
    __table_args__ = (Index("ix_turns_conversation_id_id", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoredFile(Base):
    """A file of the database store (`STORAGE_BACKEND=database`): no shared filesystem needed."""

    __tablename__ = "stored_files"

    area: Mapped[str] = mapped_column(String(16), primary_key=True)  # uploads, results
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """An `Idempotency-Key` per API key: the request's fingerprint and its job (None: in flight)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    # The API key's id, or "" when the service runs open (a primary key column has no NULL).
    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One attempt to deliver a job's webhook event: what was sent and what came back."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(16))  # started, completed
    # Standard Webhooks' `webhook-id`: the same on every retry of one event.
    message_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
