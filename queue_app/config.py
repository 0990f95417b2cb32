"""Configuration from the environment, read once: where the database is and how workers behave. A bad
value raises ConfigError naming the variable."""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from queue_app.errors import ConfigError


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # nan would pass every "at least" check (nan < low is False)
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*")  # RFC 6750's b64token, at least 16 characters
_TOKEN_NAME = re.compile(r"[a-z0-9_-]{1,64}")  # `name:token`: who moved an alias (docs/security.md)


def _api_tokens() -> dict[str, str | None]:
    """SFQ_API_TOKENS (comma-separated) and SFQ_API_TOKENS_FILE (one per line, # starts a comment line),
    each token with its name when written `name:token`: {token: name or None}. A variable that is set but
    holds no token is refused: it would leave the API open. Errors say where the bad token is, never what
    it is."""
    found: list[tuple[str, str]] = []  # (where, token)
    listed = os.environ.get("SFQ_API_TOKENS", "")
    if listed.strip():
        found = [
            (f"SFQ_API_TOKENS item {n}", t.strip()) for n, t in enumerate(listed.split(","), 1) if t.strip()
        ]
        if not found:
            raise ConfigError("SFQ_API_TOKENS is set but holds no token")
    path = os.environ.get("SFQ_API_TOKENS_FILE", "")
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read SFQ_API_TOKENS_FILE: {exc}") from None
        in_file = [
            (f"SFQ_API_TOKENS_FILE {path} line {n}", line.strip())
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not in_file:
            raise ConfigError(f"SFQ_API_TOKENS_FILE {path} holds no token")
        found += in_file
    named: dict[str, str | None] = {}
    for where, entry in found:
        name, _, token = entry.rpartition(":")
        if name and not _TOKEN_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a token's name (before its colon) is 1 to 64 of a-z, 0-9, _ or -")
        if not _TOKEN.fullmatch(token):
            raise ConfigError(
                f"{where}: a token is at least 16 letters, digits or -._~+/ (then = padding), "
                "without spaces; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        named.setdefault(token, name or None)
    return named


# SFQ_POOLER: what stands between the worker daemons (and the API) and PostgreSQL, and what that allows.
# `transaction` (PgBouncer's pool_mode=transaction, for fleets too large for a connection each to LISTEN):
# no LISTEN, no prepared statements, no other session state; idle workers poll every SFQ_POLL_INTERVAL_S
# (on average: workers.daemon.app.SpreadPollingWorker), or the fleet's daemons times SFQ_POLL_GAP_S if
# longer, which then sets the pickup latency (about the interval / N for N idle daemons), so its default
# is shorter. README, "More machines".
POOLED_NAME = "sfq"  # every connection's application_name behind a transaction pooler


@dataclass(frozen=True)
class Pooler:
    listen: bool  # LISTEN for new jobs (needs a session of its own)
    prepare: bool  # psycopg's prepared statements (live in a server session)
    poll_s: float  # SFQ_POLL_INTERVAL_S's default


POOLERS = {
    # Listening, a job's insert wakes a sleeper, and one whose time comes unheard (a retry, a scheduled
    # job, a wake that missed) the fleet's round, every SFQ_HEARTBEAT_S or sooner (sfq_beat): the poll is a
    # last net, whose every fetch is most of an idle fleet's database time (issue 15).
    "none": Pooler(listen=True, prepare=True, poll_s=30.0),
    "transaction": Pooler(listen=False, prepare=False, poll_s=1.0),
}


@dataclass(frozen=True)
class Settings:
    postgres_url: str | None
    home: Path  # where the private PostgreSQL cluster lives when POSTGRES_URL is unset
    max_jobs_per_child: int
    pool_size: int
    pooler: str  # SFQ_POOLER: what stands between workers (and the API) and PostgreSQL (POOLERS)
    poll_interval_s: float  # with LISTEN a safety net; behind a transaction pooler, sets the pickup latency
    # The fleet's polls of a queue come this far apart at most, on average: each idle worker waits at least
    # the fleet's daemons times it (workers/daemon/runtime.py, Runtime.pace); 0: SFQ_POLL_INTERVAL_S alone
    poll_gap_s: float
    timeout_s: int  # default training deadline when a request sets no timeout_s
    memory_limit_mb: int  # per training process (resident memory); 0 = no limit
    grace_s: int  # on SIGTERM, how long the running job may finish before it is put back
    heartbeat_s: int  # how often a worker proves it is alive
    rescue_after_s: int  # a running job whose worker has been silent this long goes to another worker
    max_attempts: int  # a model whose worker was lost this many times fails instead of running again
    job_retention_s: int  # finished queue jobs and accepted requests older than this are pruned (models kept)
    hostname: str  # recorded with every result; SFQ_HOSTNAME overrides the machine's name
    api_tokens: tuple[str, ...] = field(repr=False)  # none: the API is open (docs/security.md); never shown
    api_token_names: tuple[str | None, ...] = field(repr=False)  # each token's name (`name:token`), or None
    api_open_reads: bool  # with tokens: GET and HEAD need none
    log_json: bool  # SFQ_LOG_FORMAT=json: worker logs as one JSON object per line
    # SFQ_ARTIFACT_STORE: where workers put model files outside PostgreSQL (an fsspec URL); None: blob_chunks
    artifact_store: str | None = None

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be at least {low}, got {value}"
            for name, value, low in (
                ("SFQ_MAX_JOBS_PER_CHILD", self.max_jobs_per_child, 1),
                ("SFQ_API_POOL_SIZE", self.pool_size, 1),
                ("SFQ_POLL_INTERVAL_S", self.poll_interval_s, 0.1),
                ("SFQ_POLL_GAP_S", self.poll_gap_s, 0),
                ("SFQ_TIMEOUT_S", self.timeout_s, 1),
                ("SFQ_MEMORY_LIMIT_MB", self.memory_limit_mb, 0),
                ("SFQ_GRACE_S", self.grace_s, 0),
                ("SFQ_HEARTBEAT_S", self.heartbeat_s, 1),
                ("SFQ_RESCUE_AFTER_S", self.rescue_after_s, 2 * self.heartbeat_s + 1),
                ("SFQ_MAX_ATTEMPTS", self.max_attempts, 1),
                ("SFQ_JOB_RETENTION_S", self.job_retention_s, 60),
            )
            if value < low
        ]
        if self.pooler not in POOLERS:
            problems.append(f"SFQ_POOLER must be one of {', '.join(POOLERS)}, got {self.pooler!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def poll_interval_for(self, daemons: int) -> float:
        """An idle worker's mean wait between polls in a fleet of `daemons`: SFQ_POLL_INTERVAL_S, or the
        fleet's size times SFQ_POLL_GAP_S if longer (the fleet then polls a queue about that often)."""
        return max(self.poll_interval_s, daemons * self.poll_gap_s)

    @property
    def listens(self) -> bool:
        """Whether worker daemons LISTEN for new jobs (a session feature), rather than only poll."""
        return POOLERS[self.pooler].listen

    @property
    def connection_options(self) -> dict[str, object]:
        """psycopg options of every connection a worker daemon or the API opens, over its own: behind a
        transaction pooler, no prepared statements (each transaction may run on another server session,
        which lacks them), and one application_name for all (PgBouncer sets a server session's name to
        its client's each time it passes to a client of another name: at 500 polling daemons, each named
        its own, 1,950 of the 2,980 statements a second were those SETs, docs/BENCHMARKS.md; a server
        session's name there says only which client had it last)."""
        if POOLERS[self.pooler].prepare:
            return {}
        return {"prepare_threshold": None, "application_name": POOLED_NAME}

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            postgres_url=os.environ.get("POSTGRES_URL") or None,
            home=Path(os.environ.get("SFQ_HOME", ".sfq")).absolute(),
            max_jobs_per_child=_int("SFQ_MAX_JOBS_PER_CHILD", 10),
            pool_size=_int("SFQ_API_POOL_SIZE", 10),
            pooler=(pooler := os.environ.get("SFQ_POOLER") or "none"),
            poll_interval_s=_float("SFQ_POLL_INTERVAL_S", POOLERS.get(pooler, POOLERS["none"]).poll_s),
            poll_gap_s=_float("SFQ_POLL_GAP_S", 0.01),
            timeout_s=_int("SFQ_TIMEOUT_S", 3600),
            memory_limit_mb=_int("SFQ_MEMORY_LIMIT_MB", 4096),
            grace_s=_int("SFQ_GRACE_S", 30),
            heartbeat_s=_int("SFQ_HEARTBEAT_S", 10),
            rescue_after_s=_int("SFQ_RESCUE_AFTER_S", 30),
            max_attempts=_int("SFQ_MAX_ATTEMPTS", 3),
            job_retention_s=_int("SFQ_JOB_RETENTION_S", 7 * 86400),
            hostname=os.environ.get("SFQ_HOSTNAME") or socket.gethostname(),
            api_tokens=tuple(tokens := _api_tokens()),
            api_token_names=tuple(tokens.values()),
            api_open_reads=_bool("SFQ_API_OPEN_READS", True),
            log_json=_log_json(),
            artifact_store=_artifact_store(),
        )


def _artifact_store() -> str | None:
    """SFQ_ARTIFACT_STORE: a URL with a scheme (file:///srv/sfq-models, s3://bucket/prefix), or unset."""
    raw = os.environ.get("SFQ_ARTIFACT_STORE", "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", raw):
        raise ConfigError(f"SFQ_ARTIFACT_STORE must be a URL such as file:///srv/sfq-models, got {raw!r}")
    return raw.rstrip("/")


def _log_json() -> bool:
    raw = os.environ.get("SFQ_LOG_FORMAT") or "text"
    if raw not in ("text", "json"):
        raise ConfigError(f"SFQ_LOG_FORMAT must be text or json, got {raw!r}")
    return raw == "json"


def database_url(settings: Settings | None = None, *, quiet: bool = False) -> str:
    """POSTGRES_URL, or the private cluster's URL (started on demand) when it is unset."""
    settings = settings or Settings.from_env()
    if settings.postgres_url:
        return settings.postgres_url
    from queue_app import embedded

    return embedded.ensure_running(settings.home, quiet=quiet)
