"""What operators look at: `sfq status` (a terminal view) and GET /metrics (Prometheus' text format),
both read from the database, so any host sees every host's workers."""

from __future__ import annotations

from typing import Any

import psycopg

from queue_app import gateway
from queue_app.gateway import Call

RATE_MINUTES = 5  # "per minute" rates are averaged over this many minutes


def status_text(conn: psycopg.Connection, stale_after_s: float, minutes: int = 10) -> str:
    workers = gateway.run(conn, gateway.status_workers())
    lines = [f"workers ({sum(alive(w, stale_after_s) for w in workers)} alive)"]
    lines.append(f"  {'host':<16} {'pid':>7} {'n':>3} {'heartbeat':>9}  {'training':<40}")
    for w in workers:
        state = f"{w['silent_s']:.0f}s ago" if w["registered"] else "stopped"
        job = "idle"
        if w["model_id"]:
            phase = (w["progress"] or {}).get("phase", "")
            job = f"model {w['model_id']} since {w['since']:%H:%M:%S} ({phase})"
        lines.append(f"  {w['host']:<16} {w['pid']:>7} {w['instance']:>3} {state:>9}  {job:<40}")
    depth = gateway.run(conn, gateway.queue_depth())
    lines.append("queues")
    for row in depth:
        lines.append(f"  {row['queue']:<12} {row['status']:<10} {row['jobs']:>7}")
    if not depth:
        lines.append("  (no jobs)")
    rates = gateway.run(conn, gateway.throughput(minutes))
    lines.append(f"models finished per minute (last {minutes} minutes, oldest first)")
    lines.append("  completed " + " ".join(f"{r['completed']:>3}" for r in rates))
    lines.append("  failed    " + " ".join(f"{r['failed']:>3}" for r in rates))
    failures = gateway.run(conn, gateway.recent_failures(5))
    lines.append("recent failures")
    for f in failures:
        when = f"{f['finished_at']:%Y-%m-%d %H:%M:%S}" if f["finished_at"] else "-"
        lines.append(
            f"  model {f['id']} {f['symbol']} {f['algorithm']} at {when}: {(f['error'] or '')[:100]}"
        )
    if not failures:
        lines.append("  (none)")
    return "\n".join(lines)


def alive(worker: dict[str, Any], stale_after_s: float) -> bool:
    """A worker whose heartbeat is recent enough that its jobs are not handed on."""
    return bool(worker["registered"]) and worker["silent_s"] <= stale_after_s


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric(
    lines: list[str], name: str, kind: str, help_: str, samples: list[tuple[dict, float | str]]
) -> None:
    lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        inside = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        lines.append(f"{name}{{{inside}}} {value}" if inside else f"{name} {value}")


def _jobs(lines: list[str], jobs: list[dict[str, Any]]) -> None:
    _metric(
        lines,
        "sfq_jobs",
        "gauge",
        "Queue jobs by queue and status.",
        [({"queue": r["queue"], "status": r["status"]}, r["jobs"]) for r in jobs],
    )
    running = {queue: 0 for queue in sorted({r["queue"] for r in jobs})}
    for r in jobs:
        running[r["queue"]] += r["jobs"] if r["status"] == "doing" else 0
    _metric(
        lines,
        "sfq_running_jobs",
        "gauge",
        "Jobs being worked on, by queue.",
        [({"queue": q}, n) for q, n in running.items()],
    )


def _workers(lines: list[str], workers: list[dict[str, Any]], stale_after_s: float) -> None:
    _metric(
        lines,
        "sfq_workers",
        "gauge",
        "Training workers alive (heartbeat within SFQ_RESCUE_AFTER_S).",
        [({}, sum(alive(w, stale_after_s) for w in workers))],
    )
    _metric(
        lines,
        "sfq_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since each worker's last heartbeat.",
        [
            ({"host": w["host"], "pid": w["pid"], "instance": w["instance"]}, round(w["silent_s"], 3))
            for w in workers
            if w["registered"]
        ],
    )


def _durations(lines: list[str], histogram: list[dict[str, Any]]) -> None:
    lines += [
        "# HELP sfq_training_duration_seconds Training time of completed models (last attempt).",
        "# TYPE sfq_training_duration_seconds histogram",
    ]
    for h in histogram:
        algorithm = _label(h["algorithm"])
        for bound, count in zip(h["bounds"], h["buckets"], strict=True):  # sfq_duration_bounds(), in SQL
            lines.append(
                f'sfq_training_duration_seconds_bucket{{algorithm="{algorithm}",le="{float(bound)}"}} {count}'
            )
        lines.append(
            f'sfq_training_duration_seconds_bucket{{algorithm="{algorithm}",le="+Inf"}} {h["count"]}'
        )
        lines.append(f'sfq_training_duration_seconds_sum{{algorithm="{algorithm}"}} {round(h["sum"], 3)}')
        lines.append(f'sfq_training_duration_seconds_count{{algorithm="{algorithm}"}} {h["count"]}')


def _pool(lines: list[str], pool: dict[str, int]) -> None:
    _metric(
        lines,
        "sfq_api_pool_connections",
        "gauge",
        "The API's database connections by state.",
        [
            ({"state": state}, pool.get(key, 0))
            for state, key in (("open", "pool_size"), ("idle", "pool_available"), ("max", "pool_max"))
        ],
    )
    _metric(
        lines,
        "sfq_api_pool_waiting",
        "gauge",
        "Requests waiting for a database connection.",
        [({}, pool.get("requests_waiting", 0))],
    )


def _gauge_value(value: Any) -> float | str:
    """A stored figure as a sample value (a flag as 0 or 1): NaN when there is none."""
    return "NaN" if value is None else float(value)


# The decay gauges: (metric, the decay record's key, help). A figure not determined yet is NaN.
DECAY_GAUGES = (
    (
        "sfq_strategy_decayed",
        "decayed",
        "1 when the alias's live Sharpe is below its backtest's by more than the live Sharpe's standard "
        "error, 0 when not, NaN when undetermined (fewer than the minimum bars, or no backtest).",
    ),
    ("sfq_strategy_live_sharpe", "live_sharpe", "Annualised Sharpe of the alias's live paper trading."),
    (
        "sfq_strategy_backtest_sharpe",
        "backtest_sharpe",
        "Annualised Sharpe of the default backtest of the alias's model.",
    ),
    (
        "sfq_strategy_sharpe_standard_error",
        "standard_error",
        "Standard error of the live Sharpe (annualised) over its paper-traded bars.",
    ),
    ("sfq_strategy_live_bars", "n", "Paper-traded bars the alias's live Sharpe is measured over."),
)


def _strategies(lines: list[str], aliases: list[dict[str, Any]]) -> None:
    for name, key, help_ in DECAY_GAUGES:
        samples = []
        for row in aliases:
            value = (row["decay"] or {}).get(key)
            value = 0 if key == "n" and value is None else value
            samples.append(({"strategy": row["strategy"], "alias": row["alias"]}, _gauge_value(value)))
        _metric(lines, name, "gauge", help_, samples)


def prometheus_text(rows: dict[str, Any], pool: dict[str, int], stale_after_s: float) -> str:
    """The exposition text from the results of `metric_calls()`, by name, and the API pool's stats."""
    lines: list[str] = []
    _jobs(lines, rows["queue_depth"])
    _workers(lines, rows["status_workers"], stale_after_s)
    recent = rows["finished_recently"]
    _metric(
        lines,
        "sfq_models_finished_per_minute",
        "gauge",
        f"Models finished per minute, averaged over the last {RATE_MINUTES} minutes.",
        [({"status": s}, round(recent[s] / RATE_MINUTES, 3)) for s in ("completed", "failed")],
    )
    _durations(lines, rows["duration_histogram"])
    _pool(lines, pool)
    _strategies(lines, rows["strategy_alias_records"])
    return "\n".join(lines) + "\n"


def metric_calls() -> dict[str, Call[Any]]:
    """What GET /metrics reads, by name."""
    return {
        "queue_depth": gateway.queue_depth(),
        "status_workers": gateway.status_workers(),
        "finished_recently": gateway.finished_recently(RATE_MINUTES),
        "duration_histogram": gateway.duration_histogram(),
        "strategy_alias_records": gateway.strategy_alias_records(),
    }
