"""Strict parsing of settings from the environment."""

from __future__ import annotations

import ipaddress

import pytest

from models.settings import SettingError, Settings, parse_int
from scripts.configuration_page import PAGE, page


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.max_upload_bytes == 25 * 1024 * 1024
    assert settings.max_audio_seconds == 600.0
    assert settings.database_url.startswith("sqlite:///")
    assert (settings.stt_engine, settings.llm_engine, settings.tts_engine) == (
        "faster-whisper",
        "llama-cpp",
        "piper",
    )
    assert settings.llm_threads >= 1
    assert (
        settings.task_soft_time_limit
        < settings.task_time_limit
        < settings.broker_visibility_timeout
    )


@pytest.mark.parametrize(
    "env",
    [
        {"MAX_UPLOAD_MB": "lots"},
        {"MAX_UPLOAD_MB": "0"},
        {"LLM_THREADS": "2.5"},
        {"MAX_AUDIO_SECONDS": "nan"},
        {"TASK_SOFT_TIME_LIMIT": "100", "TASK_TIME_LIMIT": "90"},
        {"TASK_TIME_LIMIT": "400", "BROKER_VISIBILITY_TIMEOUT": "400"},
        {"TTS_VOICE": "nobody", "TTS_VOICES": "en_US-joe-medium"},
        {"DEFAULT_MAX_TOKENS": "2000", "MAX_TOKENS_LIMIT": "1000"},
        {"WHISPER_LANGUAGE": "zz"},
        {"MAX_HELD_REQUESTS": "-1"},
        {"OPENAI_WAIT_SECONDS": "0"},
        {"OPENAI_WAIT_SECONDS": "3601"},
        {"MAX_AUDIO_CHANNELS": "0"},
        {"MAX_AUDIO_CHANNELS": "64"},
        {"MIN_AUDIO_SAMPLE_RATE": "48000", "MAX_AUDIO_SAMPLE_RATE": "44100"},
        {"RATE_LIMIT_PER_MINUTE": "-1"},
        {"MAX_UNFINISHED_JOBS": "ten"},
        {"MAX_QUEUE_DEPTH": "1e3"},
        {"IDEMPOTENCY_TTL_SECONDS": "3600"},  # keys are kept a day at least
        {"JOB_TTL_SECONDS": "3600"},  # idempotency keys are kept a day at least
        {"AUDIO_TTL_SECONDS": str(40 * 86400), "JOB_TTL_SECONDS": str(30 * 86400)},
        {"RETENTION_INTERVAL_SECONDS": "0"},
        {"WORKER_ROLE": "gpu"},
        {"LOG_FORMAT": "xml"},
        {"METRICS_TOKEN": "short"},
        {"METRICS_TOKEN": "has spaces in it, sixteen+"},
        {"WORKER_METRICS_PORT": "70000"},
        {"WORKER_METRICS_PORT": "host:port"},
        {"WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"},
        {"WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/33"},
    ],
)
def test_malformed_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingError) as raised:
        Settings.from_env(env)
    assert any(name in str(raised.value) for name in env)


def test_given_variables_are_the_only_ones_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TEXT_CHARS", "77")
    assert Settings.from_env().max_text_chars == 77
    assert Settings.from_env({}).max_text_chars == 4000
    assert Settings.from_env({"max_text_chars": "77"}).max_text_chars == 4000  # capitals only


def test_int_bounds() -> None:
    assert parse_int("N", " 7 ", minimum=1) == 7
    with pytest.raises(SettingError, match="N must be at least 1, got 0"):
        parse_int("N", "0", minimum=1)
    with pytest.raises(SettingError, match="N must be a whole number"):
        parse_int("N", "7.5")


def test_zero_turns_a_share_off() -> None:
    env = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_UNFINISHED_JOBS": "0", "MAX_QUEUE_DEPTH": "0"}
    settings = Settings.from_env(env)
    assert (settings.rate_limit_per_minute, settings.max_unfinished_jobs) == (0, 0)
    assert settings.max_queue_depth == 0


def test_observability_settings() -> None:
    assert Settings.from_env({}).log_format == "json"
    assert Settings.from_env({}).worker_metrics_port == 0
    local = Settings.from_env({"WORKER_METRICS_PORT": "9101"})
    assert (local.worker_metrics_host, local.worker_metrics_port) == ("127.0.0.1", 9101)
    anywhere = Settings.from_env({"WORKER_METRICS_PORT": "0.0.0.0:9101", "LOG_FORMAT": "text"})
    assert (anywhere.worker_metrics_host, anywhere.log_format) == ("0.0.0.0", "text")
    token = "t" * 16
    assert token not in repr(Settings.from_env({"METRICS_TOKEN": token}))


def test_webhook_networks_are_cidrs() -> None:
    assert Settings.from_env({}).webhook_allowed_networks == ()
    listed = Settings.from_env({"WEBHOOK_ALLOWED_NETWORKS": "10.1.2.3/8, ::1"})
    assert listed.webhook_allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


def test_the_configuration_page_is_the_generated_one() -> None:
    assert PAGE.read_text() == page(), (
        "docs/configuration.md differs from the settings: run python -m scripts.configuration_page"
    )
