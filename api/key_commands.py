"""`flask --app api keys create|list|revoke`: API keys; a secret is printed once, never kept."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.orm import Session, sessionmaker

from models import api_keys

keys = AppGroup("keys", help="Create, list and revoke API keys.")


def _session() -> Session:
    sessions: sessionmaker[Session] = current_app.extensions["voicechat.sessions"]
    return sessions()


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


@keys.command("create")
@click.option("--name", required=True, help="What the key is for, shown in listings.")
@click.option(
    "--requests-per-minute",
    type=click.IntRange(min=1),
    default=None,
    help="The key's own rate limit (default: RATE_LIMIT_PER_MINUTE).",
)
@click.option(
    "--max-unfinished-jobs",
    type=click.IntRange(min=1),
    default=None,
    help="The key's own quota of queued and running jobs (default: MAX_UNFINISHED_JOBS).",
)
def create(name: str, requests_per_minute: int | None, max_unfinished_jobs: int | None) -> None:
    """Makes a key and prints its secret, this once."""
    name = name.strip()
    if not name or len(name) > 100:
        raise click.BadParameter("must be 1 to 100 characters", param_hint="--name")
    with _session() as session:
        made = api_keys.create_key(
            session,
            name,
            requests_per_minute=requests_per_minute,
            max_unfinished_jobs=max_unfinished_jobs,
        )
    click.echo(f"id:             {made.row.id}")
    click.echo(f"name:           {made.row.name}")
    click.echo(f"secret:         {made.secret}")
    click.echo(f"webhook secret: {made.webhook_secret}")
    click.echo(
        "The secret is shown this once and cannot be recovered: send it as "
        "`Authorization: Bearer <secret>`."
    )


@keys.command("list")
def list_() -> None:
    """Lists every key (never a secret), oldest first."""
    with _session() as session:
        rows = api_keys.list_keys(session)
    click.echo("id\tname\tprefix\trequests_per_minute\tmax_unfinished_jobs\tcreated\trevoked")
    for row in rows:
        revoked = row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "-"
        columns = [
            row.id,
            row.name,
            row.prefix,
            _limit(row.requests_per_minute),
            _limit(row.max_unfinished_jobs),
            row.created_at.isoformat(timespec="seconds"),
            revoked,
        ]
        click.echo("\t".join(columns))


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revokes a key by its id: its next request is refused."""
    with _session() as session:
        row = api_keys.revoke_key(session, key_id)
    if row is None:
        raise click.ClickException(f"no key has the id {key_id!r}")
    click.echo(f"revoked {row.id} ({row.name})")
