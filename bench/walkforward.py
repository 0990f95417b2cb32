"""Scenario 6: the cost of a walk-forward. A 5,000-bar daily history (a synthetic random walk), refit every
21 bars on a sliding 1,000-bar window, for Ridge, ElasticNet with a 10-value alpha grid,
HistGradientBoosting and RandomForest (100 trees): each trained by one sfq worker from the queue (its job
from claim to finish: bars loaded, features, CV, every refit, metrics, importances, the model file,
results written), and the same refits done by a plain loop of scikit-learn calls in this process on the
same features and labels (fit, predict; GridSearchCV with the same inner CV for the grid). Also the
bytes the stitched predictions take in PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit
from threadpoolctl import threadpool_limits

from bench import jobs
from bench.common import processes, start_sfq_workers, wait_for_models
from bench.scaleout import warm_sfq
from queue_app import bars, gateway
from workers.daemon.data import frame as data_frame
from workers.modelling.algorithms import ALGORITHMS
from workers.modelling.training import INNER_FOLDS, build_walk_forward, label_reach

SYMBOL = "WALK5000"
CONFIGS = {  # name: the request's algorithm, hyperparameters and grid
    "Ridge": {"algorithm": "Ridge"},
    "ElasticNet, 10-value alpha grid": {
        "algorithm": "ElasticNet",
        "alpha_grid": [float(a) for a in np.logspace(-5, -0.5, 10)],
    },
    "HistGradientBoosting": {"algorithm": "HistGradientBoosting"},
    "RandomForest, 100 trees": {"algorithm": "RandomForest", "hyperparameters": {"n_estimators": 100}},
}


def synthetic_bars(n: int, seed: int = 5) -> list[bars.Bar]:
    """A driftless random walk with a consistent intraday path, one bar a day."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, 0.003, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    volume = np.round(np.exp(rng.normal(13.0, 0.3, n)))
    first = datetime(2000, 1, 3, tzinfo=UTC)
    return [
        bars.Bar(first + timedelta(days=i), *map(float, (open_[i], high[i], low[i], close[i], volume[i])))
        for i in range(n)
    ]


def request(config: dict[str, Any], short: bool) -> dict[str, Any]:
    return {
        "symbol": SYMBOL,
        "train_window": 300 if short else 1000,
        "test_window": 60,
        "cv_folds": 2 if short else 5,
        "evaluation": {"kind": "walk_forward", "refit_every": 100 if short else 21, "window": "sliding"},
        **config,
    }


def plain_loop(spec: dict[str, Any], history) -> tuple[float, int]:
    """The same refits as sfq's, by hand, on one thread as sfq's training process: seconds and refits."""
    with threadpool_limits(1):
        return _refits(spec, history)


def _refits(spec: dict[str, Any], history) -> tuple[float, int]:
    _, walking = build_walk_forward(history, spec)
    pipeline = ALGORITHMS[spec["algorithm"]].build(spec["hyperparameters"])
    started = time.perf_counter()
    for block in walking.plan:
        X, y = walking.X.iloc[block.fit], walking.y.iloc[block.fit]
        if spec["alpha_grid"]:
            inner = TimeSeriesSplit(INNER_FOLDS, gap=label_reach(spec))
            grid = {f"{pipeline.steps[-1][0]}__alpha": spec["alpha_grid"]}
            model = GridSearchCV(pipeline, grid, scoring="neg_mean_squared_error", cv=inner).fit(X, y)
        else:
            model = clone(pipeline).fit(X, y)
        model.predict(walking.X.iloc[block.predict])
    return time.perf_counter() - started, len(walking.plan)


def scenario(url: str, short: bool) -> dict[str, Any]:
    n_bars = 1200 if short else 5000
    history = synthetic_bars(n_bars)
    with gateway.connect(url, "sfq-bench") as conn:
        bars.load(conn, SYMBOL, "1d", history)
    frame = data_frame([(b.ts, b.open, b.high, b.low, b.close, b.volume) for b in history])
    configs = dict(list(CONFIGS.items())[:2]) if short else CONFIGS
    rows, data = [], {}
    with processes() as started:
        daemons = start_sfq_workers(started, url, 1)
        warm_sfq(url, daemons)
        for name, config in configs.items():
            body = request(config, short)
            (model_id,) = jobs.submit(url, [body])
            wait_for_models(url, [model_id], 600 if short else 3600)
            with gateway.connect(url, "sfq-bench") as conn:
                (timing,) = gateway.run(conn, gateway.model_timings([model_id]))
                spec = gateway.run(conn, gateway.get_model(model_id))["spec"]
                size = gateway.run(conn, gateway.prediction_series_size([model_id]))
            loop_s, refits = plain_loop(spec, frame)
            job_s, fit_s = timing["seconds"], timing["timings"]["fit"]
            rows.append(
                (
                    "walk-forward",
                    f"{name}: {n_bars} bars, {refits} refits, sfq job / its refits / plain loop",
                    f"{job_s:.1f} s / {fit_s:.1f} s / {loop_s:.1f} s: overhead x{job_s / loop_s:.2f} "
                    f"(refits alone x{fit_s / loop_s:.2f})",
                )
            )
            data[name] = {"job_s": job_s, "fit_s": fit_s, "loop_s": loop_s, "refits": refits, **size}
    per_prediction = sum(d["bytes"] for d in data.values()) / sum(d["predictions"] for d in data.values())
    rows.append(
        (
            "walk-forward",
            "stored predictions: bytes per prediction (model_prediction_series, pg_column_size)",
            f"{per_prediction:.2f} B; 100,000 models x 4,000 bars: {per_prediction * 4e8 / 1e9:.1f} GB",
        )
    )
    return {"rows": rows, "data": {"configs": data, "bytes_per_prediction": per_prediction}}
