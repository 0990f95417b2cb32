"""Read latency against the size of the database (issue 15): the leaderboard (first page, filtered, sorted by
a metric, a deep page by offset and by keyset), one model, GET /metrics, `sfq status`, the dashboard's pages
and a sweep's leaderboard, each measured at several sizes of synthetic rows through a real `sfq api`.

The rows are synthetic (INSERT ... SELECT FROM generate_series, with triggers off, then sfq_recount()):
models over a year, mostly completed with random held-out metrics, 50 symbols and 8 algorithms; one
attempt per started model; a queue job per ten models; a sweep of 200 models. SFQ_BENCH_READS_SIZES
(comma-separated model counts) overrides the sizes; the chart (p50 against models) is written next to the
report in a full run."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import psycopg

from bench.common import ROOT, Process, free_port, new_figure, percentile, processes, save_chart
from queue_app import gateway, monitor

SHORT_SIZES = (0, 2_000)
FULL_SIZES = (0, 100_000, 1_000_000)
CHART = ROOT / "docs" / "bench-reads.png"
ALGORITHMS = ("Ridge", "Lasso", "ElasticNet", "RandomForest", "ExtraTrees", "GradientBoosting", "KNN", "SVR")
SWEEP_SIZE = 200
BATCH = 500_000  # rows per INSERT statement while filling

# Each row a model: status by its position (about 90% completed), timestamps over the year before now,
# held-out metrics drawn at random for the completed ones.
FILL_MODELS = """
INSERT INTO models (fingerprint, spec_extra, symbol, timeframe, target_col, target_transform, horizon,
                    algorithm, hyperparameters, features, train_window, test_window, data_end, cv_folds,
                    cv_strategy, context_symbols, alpha_grid, l1_ratio_grid, regime_configs, status, error,
                    submitted_at, started_at, finished_at, worker_host, worker_pid, attempts, metrics)
SELECT 'bench-' || g, '{"bench": true}', 'SYM' || (g %% 50), '1d', 'close', 'log_return', 1 + g %% 5,
       (%(algorithms)s::text[])[1 + g %% 8], '{}', '{}', 1000, 250, now(), 5, 'expanding', '{}', '{}', '{}',
       '[]', s.status, CASE WHEN s.status = 'failed' THEN 'synthetic failure' END, t.at,
       CASE WHEN s.status <> 'queued' THEN t.at + interval '1 minute' END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
            THEN t.at + interval '1 minute' + random() * interval '10 minutes' END,
       CASE WHEN s.status <> 'queued' THEN 'bench-host' END, CASE WHEN s.status <> 'queued' THEN 1 END,
       CASE WHEN s.status <> 'queued' THEN 1 ELSE 0 END,
       CASE WHEN s.status = 'completed' THEN jsonb_build_object(
           'ic', random() - 0.5, 'r2', random() - 0.7, 'rmse', random() * 0.02, 'mae', random() * 0.015,
           'directional_accuracy', 0.4 + random() * 0.2, 'directional_base_rate', 0.5 + random() * 0.05,
           'n', 250) END
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
       LATERAL (SELECT (CASE WHEN g %% 100 < 90 THEN 'completed' WHEN g %% 100 < 95 THEN 'failed'
                             WHEN g %% 100 < 97 THEN 'queued' WHEN g %% 100 < 98 THEN 'running'
                             ELSE 'cancelled' END)::sfq_model_status AS status) AS s,
       LATERAL (SELECT now() - interval '365 days' * (1 - g::float8 / %(total)s) AS at) AS t
"""
FILL_ATTEMPTS = """
INSERT INTO model_attempts (model_id, attempt, job_id, worker_host, worker_pid, started_at, ended_at, outcome)
SELECT id, 1, NULL, worker_host, worker_pid, started_at, finished_at,
       CASE WHEN status = 'running' THEN NULL ELSE status::text END
  FROM models WHERE id BETWEEN %(first)s AND %(last)s AND started_at IS NOT NULL
"""
FILL_JOBS = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
SELECT 'training', 'train_model', jsonb_build_object('model_id', g),
       (CASE WHEN g %% 100 < 97 THEN 'succeeded' WHEN g %% 100 < 99 THEN 'failed' ELSE 'todo' END)
           ::procrastinate_job_status, 1
  FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
FILL_SWEEP = """
WITH sweep AS (
    INSERT INTO sweeps (base, grid, priority, combinations, created, elapsed_ms)
    VALUES ('{"symbol": "SYM1"}', '{"horizon": [1]}', -10, %(size)s, %(size)s, 0) RETURNING id
)
INSERT INTO sweep_models (sweep_id, position, combination, model_id, deduplicated)
SELECT sweep.id, row_number() OVER (ORDER BY m.id), jsonb_build_object('n', m.id), m.id, false
  FROM sweep, (SELECT id FROM models ORDER BY id DESC LIMIT %(size)s) AS m
RETURNING sweep_id
"""


# The filled tables' indexes that no constraint owns: dropped while filling, built again after (a build
# sorts once; kept, each of the metric indexes of 0017 was updated row by row, at random places: the 10 M
# fill took ~20 minutes that way).
FILLED_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
 WHERE i.indrelid IN ('models'::regclass, 'model_attempts'::regclass, 'procrastinate_jobs'::regclass)
   AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""


def fill(url: str, models: int, have: int) -> None:
    """From `have` models to `models`, with their attempts and jobs; counters recounted."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers while filling: recounted below
        conn.execute("SET maintenance_work_mem = '512MB'")
        indexes = conn.execute(FILLED_INDEXES).fetchall() if models - have >= BATCH else []
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        for first in range(have + 1, models + 1, BATCH):
            last = min(first + BATCH - 1, models)
            span = {"first": first, "last": last}
            conn.execute(FILL_MODELS, {**span, "total": models, "algorithms": list(ALGORITHMS)})
            conn.execute(FILL_ATTEMPTS, span)
            conn.execute(FILL_JOBS, {"first": first // 10 + 1, "last": last // 10})
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("SET session_replication_role = origin")
        conn.execute("SELECT sfq_recount()")
        if models > have:  # an empty database is left as `sfq db upgrade` leaves it: never analyzed
            # (analyzed empty, with autovacuum off, a session's cached plans stay those of an empty
            # table: the API's foreign-key checks then scanned every job, BENCHMARKS "Enqueue at scale")
            conn.execute("VACUUM ANALYZE models, model_attempts, procrastinate_jobs")


def _paths(url: str, models: int) -> dict[str, str]:
    """What is measured, by label: a path of the API (or `sfq status`), with ids and cursors of this
    database (a deep page: the middle of the leaderboard by ic)."""
    with psycopg.connect(url, autocommit=True) as conn:
        some = conn.execute("SELECT max(id) FROM models").fetchone()[0] or 1
        sweep = conn.execute(FILL_SWEEP, {"size": min(SWEEP_SIZE, models)}).fetchone() if models else None
        middle = conn.execute(
            "SELECT metrics->>'ic', id FROM models WHERE metrics ? 'ic' "
            "ORDER BY (metrics->>'ic')::float8 DESC, id DESC OFFSET %s LIMIT 1",
            (models * 9 // 20,),
        ).fetchone()
    deep = min(10_000, models * 9 // 20)
    leaderboard = (
        "/models?limit=20",
        "/models?sort=ic&limit=20",
        "/models?sort=rmse&order=asc&symbol=SYM7&limit=20",
        "/models?status=failed&algorithm=KNN&limit=20",
        # A symbol with an algorithm never run on it (SYM7's models are of the odd-numbered algorithms).
        "/models?symbol=SYM7&algorithm=Ridge&limit=20",
        "/models?sort=ic&symbol=SYM7&algorithm=Ridge&limit=20",
    )
    paths = {f"GET {path}": path for path in leaderboard}
    if models:  # an offset past the end is refused (the dashboard's page by number: read by that offset)
        paths["GET /models?sort=ic&limit=20&offset=(min(10000, the middle))"] = (
            f"/models?sort=ic&limit=20&offset={deep}"
        )
        paths["GET /ui/models?sort=ic&page=(min(10000, the middle) / 25 + 1)"] = (
            f"/ui/models?sort=ic&page={deep // 25 + 1}"
        )
    after = f"&after={middle[0]}:{middle[1]}" if middle else ""
    paths["GET /models?sort=ic&limit=20&after=(the middle)"] = f"/models?sort=ic&limit=20{after}"
    paths["GET /metrics"] = "/metrics"
    paths["sfq status (its queries, in process)"] = "status"
    for page in ("/ui/", "/ui/models", "/ui/models?sort=ic"):
        paths[f"GET {page}"] = page
    # The dashboard's "next" from the middle (keyset).
    paths["GET /ui/models?sort=ic&page=(the middle's)&after=(the middle)"] = (
        f"/ui/models?sort=ic&page={models * 9 // 20 // 25 + 2}{after}"
    )
    if models:  # one model, and a sweep: none to read in an empty database
        paths["GET /models/{id}"] = f"/models/{some}"
        paths["GET /ui/models/{id}"] = f"/ui/models/{some}"
        paths["GET /sweeps/{id}"] = f"/sweeps/{sweep[0]}"
        paths["GET /ui/sweeps/{id}"] = f"/ui/sweeps/{sweep[0]}"
    return paths


def _measure(url: str, port: int, paths: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Milliseconds of each path, `repeats` times, round-robin (a noisy moment spreads over all paths)."""
    timings: dict[str, list[float]] = {label: [] for label in paths}
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
        gateway.connect(url) as conn,
    ):
        for _ in range(repeats + 1):  # the first round warms up, unrecorded
            for label, path in paths.items():
                start = time.perf_counter()
                if path == "status":
                    monitor.status_text(conn, 60)
                else:
                    response = client.get(path)
                    if response.status_code != 200:
                        raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
                timings[label].append((time.perf_counter() - start) * 1000)
    return {label: values[1:] for label, values in timings.items()}


def _chart(results: dict[int, dict[str, list[float]]], short: bool) -> str | None:
    sizes = sorted(results)
    figure, axis = new_figure(figsize=(10, 6))
    for label in results[sizes[-1]]:
        measured = [s for s in sizes if label in results[s]]
        axis.plot(
            [max(s, 1) for s in measured],
            [percentile(results[s][label], 0.5) for s in measured],
            marker="o",
            label=label,
        )
    axis.set_xscale("log")
    axis.axhline(100, color="red", linestyle="--", linewidth=1, label="goal: 100 ms p50")
    axis.set_xlabel("models in the database (0 drawn at 1)")
    axis.set_ylabel("p50 latency, ms")
    axis.set_title("sfq read paths against the size of the database")
    axis.legend(fontsize=7, loc="upper left")
    return save_chart(figure, CHART, short)


def scenario(url: str, short: bool) -> dict[str, Any]:
    sizes = SHORT_SIZES if short else FULL_SIZES
    if os.environ.get("SFQ_BENCH_READS_SIZES"):
        sizes = tuple(int(s) for s in os.environ["SFQ_BENCH_READS_SIZES"].split(","))
    repeats = 5 if short else 30
    results: dict[int, dict[str, list[float]]] = {}
    fill_s: dict[int, float] = {}
    have = 0
    for models in sizes:
        start = time.perf_counter()
        fill(url, models, have)
        fill_s[models], have = time.perf_counter() - start, models
        paths = _paths(url, models)
        with processes() as started:
            port = free_port()
            api = Process(["api", "--port", str(port)], {"POSTGRES_URL": url})
            started.append(api)
            api.wait_for_line(r"Uvicorn running on", timeout=60)
            results[models] = _measure(url, port, paths, repeats)
    rows = []
    for models, timings in results.items():
        for label, values in timings.items():
            p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
            rows.append(("reads", f"{label}, {models} models", f"{p50:.1f} / {p99:.1f} ms (p50 / p99)"))
    return {
        "rows": rows,
        "data": {
            "repeats": repeats,
            "fill_s": fill_s,
            "results": results,
            "chart": _chart(results, short),
        },
    }
