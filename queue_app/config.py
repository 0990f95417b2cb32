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
    timeout_s: int  # default training deadline when a request sets no timeout_s
    memory_limit_mb: int  # per training process (resident memory); 0 = no limit
    grace_s: int  # on SIGTERM, how long the running job may finish before it is put back
    heartbeat_s: int  # how often a worker proves it is alive
    rescue_after_s: int  # a running job whose worker has been silent this long goes to another worker
    max_attempts: int  # a model whose worker was lost this many times fails instead of running again
    job_retention_days: int  # finished queue jobs older than this are pruned (models are kept)

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be at least {low}, got {value}"
            for name, value, low in (
                ("SFQ_MAX_JOBS_PER_CHILD", self.max_jobs_per_child, 1),
                ("SFQ_API_POOL_SIZE", self.pool_size, 1),
                ("SFQ_POLL_INTERVAL_S", self.poll_interval_s, 1),
                ("SFQ_TIMEOUT_S", self.timeout_s, 1),
                ("SFQ_MEMORY_LIMIT_MB", self.memory_limit_mb, 0),
                ("SFQ_GRACE_S", self.grace_s, 0),
                ("SFQ_HEARTBEAT_S", self.heartbeat_s, 1),
                ("SFQ_RESCUE_AFTER_S", self.rescue_after_s, 2 * self.heartbeat_s + 1),
                ("SFQ_MAX_ATTEMPTS", self.max_attempts, 1),
                ("SFQ_JOB_RETENTION_DAYS", self.job_retention_days, 1),
            )
            if value < low
        ]
        if problems:
            raise SystemExit("sfq: " + "; ".join(problems))

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            postgres_url=os.environ.get("POSTGRES_URL") or None,
            home=Path(os.environ.get("SFQ_HOME", ".sfq")).absolute(),
            max_jobs_per_child=_int("SFQ_MAX_JOBS_PER_CHILD", 10),
            pool_size=_int("SFQ_API_POOL_SIZE", 10),
            poll_interval_s=_int("SFQ_POLL_INTERVAL_S", 5),
            timeout_s=_int("SFQ_TIMEOUT_S", 3600),
            memory_limit_mb=_int("SFQ_MEMORY_LIMIT_MB", 4096),
            grace_s=_int("SFQ_GRACE_S", 30),
            heartbeat_s=_int("SFQ_HEARTBEAT_S", 5),
            rescue_after_s=_int("SFQ_RESCUE_AFTER_S", 20),
            max_attempts=_int("SFQ_MAX_ATTEMPTS", 3),
            job_retention_days=_int("SFQ_JOB_RETENTION_DAYS", 7),
        )


def database_url(settings: Settings | None = None, *, quiet: bool = False) -> str:
    """POSTGRES_URL, or the private cluster's URL (started on demand) when it is unset."""
    settings = settings or Settings.from_env()
    if settings.postgres_url:
        return settings.postgres_url
    from queue_app import embedded

    return embedded.ensure_running(settings.home, quiet=quiet)
