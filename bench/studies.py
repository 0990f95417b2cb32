"""Scenario 7: searches that learn. One space of 540 configurations of a Ridge model (horizon 1-5, six
feature sets, six alphas, three training windows), searched by studies on the same 2 sfq workers: the grid
(every point) against random, TPE, TPE with successive halving, and evolution, each given a quarter of the
core-seconds the grid took, each training models of its own (a `run` of its own). On (a) a synthetic
series with a planted signal, whose best configuration is known (a bar's volume z-score moves the
return two bars on: horizon 1 with the feature set holding volume_z_20), and (b) real daily bars (AAPL).
Objective: cv_ic (the mean IC over the 5 CV folds of the training window).

Reported: the best objective each reached against core-seconds (table and docs/benchmarks/studies.png),
its fraction of the grid's best, the core-seconds it took to reach 95% of the grid's best; the core-
seconds pruning saved; and the cost of asking for one trial (the advance's ask: lock, read the journal,
sample with TPE, record) at 100, 1,000 and 5,000 trials in a study."""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, processes, start_sfq_workers
from bench.scaleout import warm_sfq
from queue_app import bars, gateway, studies

PLANTED = "PLANTED"
FEATURE_SETS = [
    ["ret_1", "vol_5"],
    ["ret_5", "vol_20"],
    ["ma_ratio_5", "rsi_14"],
    ["volume_z_20", "ret_5"],  # the planted signal's
    ["vol_5", "vol_20", "hl_range"],
    ["ret_20", "ma_ratio_20"],
]
SPACE = {
    "horizon": {"type": "int", "low": 1, "high": 5},
    "features": {"type": "categorical", "choices": FEATURE_SETS},
    "hyperparameters.alpha": {"type": "categorical", "choices": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]},
    "train_window": {"type": "categorical", "choices": [500, 700, 1000]},
}
SHORT_SPACE = {
    "horizon": {"type": "int", "low": 1, "high": 2},
    "features": {"type": "categorical", "choices": FEATURE_SETS[2:4]},
}
METHODS = {  # name: the study's sampler and pruner
    "grid": ("grid", "none"),
    "random": ("random", "none"),
    "TPE": ("tpe", "none"),
    "TPE + successive halving": ("tpe", "successive_halving"),
    "evolution": ("evolution", "none"),
}
CHART = Path("docs") / "benchmarks" / "studies.png"
ASK_SIZES = (100, 1000, 5000)


def planted_bars(n: int, beta: float = 0.008, seed: int = 7) -> list[bars.Bar]:
    """Daily bars whose log returns are noise except for one planted signal: the return two bars after
    bar t moves with t's volume z-score (the feature volume_z_20, computed as sfq computes it). With the
    default execution lag (enter at the next close), a model's horizon-1 label at t is exactly that
    return; a longer horizon adds bars of noise to it, and a feature set without volume_z_20 sees none of
    it. So the best configuration is known: horizon 1 with the feature set holding volume_z_20. Strong
    (an IC of about 0.6): a weaker one (0.34) was matched by the luckiest of 540 configurations' CV
    means on noise (the grid's best was a horizon-5 model on unrelated features)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    volume = np.round(np.exp(rng.normal(13.0, 0.3, n)))
    logged = pd.Series(np.log1p(volume))
    z = ((logged - logged.rolling(20).mean()) / logged.rolling(20).std()).fillna(0.0).to_numpy()
    r = rng.normal(0, 0.01, n)
    r[2:] += beta * z[:-2]
    close = 100 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.003, n)))
    first = datetime(2010, 1, 4, tzinfo=UTC)
    return [
        bars.Bar(first + timedelta(days=i), *map(float, (open_[i], high[i], low[i], close[i], volume[i])))
        for i in range(n)
    ]


def _run_study(url: str, study: dict[str, Any], timeout: float) -> tuple[dict[str, Any], float]:
    """Create a study and wait for it to end; its report (without importances) and its wall seconds."""
    started = time.perf_counter()
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        study_id = gateway.run(conn, gateway.create_study(study, "bench"))["id"]
        deadline = time.monotonic() + timeout
        while True:
            row = gateway.run(conn, gateway.get_study(study_id))
            trials = gateway.run(conn, gateway.study_trials(study_id))
            if row["state"] != "running" and not any(t["state"] == "running" for t in trials):
                return studies.report(row, trials, with_importances=False), time.perf_counter() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"study {study_id} not finished within {timeout} s: {row['state']}")
            time.sleep(0.5)


def _reached(board: dict[str, Any], target: float) -> float | None:
    """Core-seconds spent when the best value first reached `target` (None: never)."""
    return next(
        (p["cpu_seconds"] for p in board["best_so_far"] if p["best"] is not None and p["best"] >= target),
        None,
    )


def _saved(board: dict[str, Any]) -> tuple[float, float]:
    """Pruning's saving, estimated: each pruned trial would have cost the mean core-seconds of a complete one.
    Returns (core-seconds saved, fraction of what the study would have spent without pruning)."""
    trials = board["trials"]
    complete = [t["cpu_seconds"] for t in trials if t["state"] == "complete"]
    pruned = [t["cpu_seconds"] for t in trials if t["state"] == "pruned"]
    if not complete or not pruned:
        return 0.0, 0.0
    saved = sum(statistics.mean(complete) - spent for spent in pruned)
    return saved, saved / (board["progress"]["cpu_seconds"] + saved)


def search(url: str, symbol: str, short: bool) -> dict[str, Any]:
    base = {"symbol": symbol, "algorithm": "Ridge", "test_window": 250, "cv_folds": 5}
    space = SHORT_SPACE if short else SPACE
    if short:
        base["train_window"] = 300
    results: dict[str, Any] = {}
    # Each method trains its own models: a `run` of its own (part of the fingerprint) in its base, else
    # every method after the grid would reuse the grid's models and spend nothing.
    runs = {name: number for number, name in enumerate(METHODS, start=1)}
    grid, _ = _run_study(
        url,
        {
            "base": {**base, "run": runs["grid"]},
            "space": space,
            "objective": "cv_ic",
            "sampler": "grid",
            "pruner": "none",
            "seed": 1,
        },
        3600,
    )
    if not grid["best"]:
        errors = {t["error"] for t in grid["trials"]}
        raise RuntimeError(f"no trial of the grid succeeded: {sorted(errors)[:3]}")
    budget = grid["progress"]["cpu_seconds"] / 4
    best = grid["best"][0]["values"][0]
    for name, (sampler, pruner) in METHODS.items():
        if name == "grid":
            board = grid
        else:
            study = {
                "base": {**base, "run": runs[name]},
                "space": space,
                "objective": "cv_ic",
                "sampler": sampler,
                "pruner": pruner,
                "cpu_seconds": budget,
                "n_trials": 540,
                "seed": 1,
            }
            board, _ = _run_study(url, study, 3600)
        reached = board["best"][0]["values"][0] if board["best"] else None
        results[name] = {
            "best": reached,
            "fraction_of_grid": reached / best if reached is not None and best > 0 else None,
            "cpu_seconds": board["progress"]["cpu_seconds"],
            "cpu_to_95": _reached(board, 0.95 * best) if best > 0 else None,
            "trials": board["progress"]["trials"],
            "pruned": board["progress"]["pruned"],
            "saved": _saved(board),
            "curve": [(p["cpu_seconds"], p["best"]) for p in board["best_so_far"]],
            "best_params": board["best"][0]["params"] if board["best"] else None,
        }
    return results


def ask_costs(url: str, sizes: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """The advance's ask (the study's row locked, the journal read, TPE's sample, the trial recorded in the
    journal) in a study that holds `size` finished trials, measured in this process as a worker runs it,
    with its journal replayed already (warm); and the first ask of a process (cold: the whole journal
    replayed). p50 of 20 asks (warm), 3 (cold)."""
    import optuna

    from workers.daemon import studies as advancing

    costs: dict[int, dict[str, float]] = {}
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        study = {
            "base": {"symbol": "AAPL", "algorithm": "Ridge"},
            "space": SPACE,
            "objective": "cv_ic",
            "n_trials": 100000,
        }
        study_id = gateway.run(conn, gateway.create_study(study, "bench"))["id"]
        gateway.run(conn, gateway.stop_study(study_id))  # no worker advances it: this process does
        filled, rng = 0, np.random.default_rng(0)
        for size in sizes:
            with advancing._locked(conn, study_id) as (row, engine):  # the trials, asked at random, told
                filler = engine.study(row, sampler=optuna.samplers.RandomSampler(seed=size))
                for _ in range(size - filled):
                    trial = filler.ask()
                    advancing.search.suggest(trial, SPACE, row["base"])
                    filler.tell(trial, float(rng.normal(0.02, 0.03)))
            filled = size

            def ask_once(seed: int) -> float:
                started = time.perf_counter()
                with advancing._locked(conn, study_id) as (row, engine):
                    sampler = advancing.search.SAMPLERS["tpe"].for_trial(0, seed, row["space"])
                    trial = engine.study(row, sampler=sampler).ask()
                    advancing.search.suggest(trial, row["space"], row["base"])
                    elapsed = time.perf_counter() - started
                    engine.study(row).tell(trial.number, float(rng.normal(0.02, 0.03)))
                return elapsed

            warm = [ask_once(size + i) for i in range(20)]
            cold = []
            for i in range(3):
                advancing._ENGINES.pop(study_id, None)
                cold.append(ask_once(size + 20 + i))
            filled += 23
            costs[size] = {
                "warm_ms": statistics.median(warm) * 1000,
                "cold_ms": statistics.median(cold) * 1000,
            }
    return costs


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    for ax, (series, methods) in zip(axes, results.items(), strict=True):
        for name, result in methods.items():
            points = [(x, y) for x, y in result["curve"] if y is not None]
            ax.step([x for x, _ in points], [y for _, y in points], where="post", label=name)
        ax.set_title(series)
        ax.set_xlabel("core-seconds")
        ax.set_ylabel("best cv_ic so far")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def scenario(url: str, short: bool) -> dict[str, Any]:
    with gateway.connect(url, "sfq-bench", autocommit=True) as conn:
        bars.load(conn, PLANTED, "1d", planted_bars(1200 if short else 2000))
    results: dict[str, dict[str, Any]] = {}
    with processes() as started:
        daemons = start_sfq_workers(started, url, 2)
        warm_sfq(url, daemons)
        for label, symbol in (("planted signal", PLANTED), ("real bars (AAPL)", "AAPL")):
            results[label] = search(url, symbol, short)
    asks = ask_costs(url, (20, 50) if short else ASK_SIZES)
    if not short:
        chart(results, ROOT / CHART)
    rows = []
    for label, methods in results.items():
        grid = methods["grid"]
        for name, r in methods.items():
            fraction = "-" if r["fraction_of_grid"] is None else f"{r['fraction_of_grid']:.3f}"
            to_95 = "never" if r["cpu_to_95"] is None else f"{r['cpu_to_95']:.1f} core-s"
            rows.append(
                (
                    "studies",
                    f"{label}: {name}: best cv_ic, of grid's best, core-s, to 95% of grid's best, "
                    "trials (pruned)",
                    f"{r['best']:.4f}, {fraction}, {r['cpu_seconds']:.1f} core-s "
                    f"({r['cpu_seconds'] / grid['cpu_seconds']:.2f} of grid's), {to_95}, "
                    f"{r['trials']} ({r['pruned']})",
                )
            )
        rows.append(("studies", f"{label}: the grid's best configuration", json.dumps(grid["best_params"])))
        saved_s, saved_fraction = methods["TPE + successive halving"]["saved"]
        rows.append(
            (
                "studies",
                f"{label}: core-seconds pruning saved (TPE + successive halving, estimated)",
                f"{saved_s:.1f} core-s, {saved_fraction:.1%} of what it would have spent",
            )
        )
    for size, cost in asks.items():
        rows.append(
            (
                "studies",
                f"ask one trial (TPE) in a study of {size} trials: warm / cold process",
                f"{cost['warm_ms']:.1f} ms / {cost['cold_ms']:.0f} ms",
            )
        )
    data = {
        "results": {label: {k: {**v, "curve": None} for k, v in m.items()} for label, m in results.items()},
        "asks": asks,
    }
    return {"rows": rows, "data": data}
