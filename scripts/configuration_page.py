"""Writes docs/configuration.md from the settings' declaration in models/settings.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from models.settings import Settings

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
# Each table's title, keyed by its first setting in the declaration's order.
GROUPS = {
    "data_dir": "Storage and roles",
    "max_upload_mb": "Requests",
    "stt_engine": "Engines",
    "task_soft_time_limit": "Job delivery",
    "rate_limit_per_minute": "Fair sharing",
    "allowed_hosts": "Access",
    "webhook_allowed_networks": "Webhooks",
    "audio_ttl_seconds": "Retention",
    "log_format": "Observability",
}
INTRO = (
    "<!-- Generated from models/settings.py by `python -m scripts.configuration_page`. -->\n\n"
    "Each setting is read from its environment variable (never a `.env` file); unset or blank, "
    "it takes its default."
)


def _default(field: FieldInfo) -> str:
    if field.annotation is SecretStr:
        return "unset (secret)"
    if field.default_factory is not None:
        return "derived"
    value = field.default
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return f"`{text}`" if text else "empty"


def _allowed(field: FieldInfo) -> str:
    if get_origin(field.annotation) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(field.annotation))
    bounds = [(m, key) for m in field.metadata for key in ("ge", "le") if hasattr(m, key)]
    return ", ".join(f"{'≥' if key == 'ge' else '≤'} {getattr(m, key)}" for m, key in bounds)


def page() -> str:
    """The Markdown of the configuration page: one table per group of settings."""
    lines = ["# Configuration", "", INTRO]
    for name, field in Settings.model_fields.items():
        if name in GROUPS:
            lines += ["", f"## {GROUPS[name]}", ""]
            lines += ["| Variable | Default | Allowed | Description |", "|---|---|---|---|"]
        if field.validation_alias is None:  # an aliased field is read from the other's variable
            text = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name.upper()}` | {_default(field)} | {_allowed(field)} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    PAGE.write_text(page())
