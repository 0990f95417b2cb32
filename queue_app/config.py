"""Configuration from the environment, read once: where the database is and how workers behave."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"sfq: {name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    postgres_url: str | None
    home: Path  # where the private PostgreSQL cluster lives when POSTGRES_URL is unset
    max_jobs_per_child: int
    pool_size: int
    poll_interval_s: int  # safety net only: idle workers are woken by LISTEN/NOTIFY

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            postgres_url=os.environ.get("POSTGRES_URL") or None,
            home=Path(os.environ.get("SFQ_HOME", ".sfq")).absolute(),
            max_jobs_per_child=_int("SFQ_MAX_JOBS_PER_CHILD", 10),
            pool_size=_int("SFQ_API_POOL_SIZE", 10),
            poll_interval_s=_int("SFQ_POLL_INTERVAL_S", 5),
        )


def database_url(settings: Settings | None = None, *, quiet: bool = False) -> str:
    """POSTGRES_URL, or the private cluster's URL (started on demand) when it is unset."""
    settings = settings or Settings.from_env()
    if settings.postgres_url:
        return settings.postgres_url
    from queue_app import embedded

    return embedded.ensure_running(settings.home, quiet=quiet)
