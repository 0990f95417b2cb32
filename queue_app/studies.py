"""A study's report: progress, its best trial (the Pareto front for several objectives), every trial, the
best value so far against trial number and core-seconds, the deflated Sharpe ratio of its best model by
backtest Sharpe with N = every trial, parameter importances (Optuna's fANOVA) and, for `evolution`, which
mutations helped. Shared by GET /studies/{id}, `sfq study show` and /ui/studies/{id}."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from queue_app import search, sweeps

SUCCEEDED = ("complete", "reused")
SHOWN_STATES = ("running", "complete", "reused", "pruned", "failed")  # in the order a summary lists them


def _better(direction: str) -> int:
    return 1 if direction == "maximize" else -1


def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    signs = [_better(d) for d in directions]
    return all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True)) and a != b


def best_trials(study: dict[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best trial (ties: the first), or the Pareto front (every trial no other dominates) for several."""
    scored = [t for t in trials if t["state"] in SUCCEEDED and t["values"]]
    directions = list(study["directions"])
    if not scored:
        return []
    if len(directions) == 1:
        sign = _better(directions[0])
        return [max(scored, key=lambda t: (sign * t["values"][0], -t["number"]))]
    return [t for t in scored if not any(_dominates(o["values"], t["values"], directions) for o in scored)]


def best_so_far(study: dict[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first objective's best value after each trial (in trial order), with the core-seconds spent."""
    sign = _better(study["directions"][0])
    best, spent, curve = None, 0.0, []
    for trial in trials:
        spent += float(trial["cpu_seconds"] or 0)
        if trial["state"] in SUCCEEDED and trial["values"]:
            value = trial["values"][0]
            best = value if best is None or sign * value > sign * best else best
        curve.append({"trial": trial["number"], "cpu_seconds": round(spent, 3), "best": best})
    return curve


def mutations(study: dict[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evolved trial: its parent, what changed, and by how much the first objective improved."""
    by_number = {t["number"]: t for t in trials}
    sign = _better(study["directions"][0])
    rows = []
    for trial in trials:
        parent = by_number.get(trial["parent_number"]) if trial["parent_number"] is not None else None
        if parent is None:
            continue
        gain = None
        if trial["values"] and parent["values"]:
            gain = sign * (trial["values"][0] - parent["values"][0])
        rows.append(
            {
                "number": trial["number"],
                "model_id": trial["model_id"],
                "parent_number": parent["number"],
                "parent_model_id": parent["model_id"],
                "mutation": trial["mutation"],
                "improvement": gain,
            }
        )
    return rows


def importances(study: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Each searched parameter's share of the first objective's variance (Optuna's fANOVA over the
    succeeded trials, on the parameters every one of them has), or why it cannot be computed yet."""
    scored = [t for t in trials if t["state"] in SUCCEEDED and t["values"]]
    if len(scored) < 4:
        return {"method": "fanova", "values": {}, "why": f"needs 4 succeeded trials, has {len(scored)}"}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    frozen = []
    for trial in scored:
        params, distributions = search.optuna_params(trial["params"], study["space"])
        frozen.append(
            optuna.trial.create_trial(params=params, distributions=distributions, value=trial["values"][0])
        )
    sample = optuna.create_study(direction=study["directions"][0])
    sample.add_trials(frozen)
    try:
        values = optuna.importance.get_param_importances(
            sample, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError) as error:  # e.g. a single point, or no parameter in every trial
        return {"method": "fanova", "values": {}, "why": str(error)}
    return {"method": "fanova", "values": {k: round(float(v), 4) for k, v in values.items()}}


def _trial(trial: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": trial["number"],
        "model_id": trial["model_id"],
        "state": trial["state"],
        "params": trial["params"],
        "values": trial["values"],
        "fold_values": trial["fold_values"],
        "parent_number": trial["parent_number"],
        "mutation": trial["mutation"],
        "cpu_seconds": round(float(trial["cpu_seconds"] or 0), 3),
        "error": trial["error"],
    }


def report(
    study: dict[str, Any], trials: list[dict[str, Any]], with_importances: bool = True
) -> dict[str, Any]:
    states = Counter(t["state"] for t in trials)
    cpu = sum(float(t["cpu_seconds"] or 0) for t in trials)
    pruned_cpu = sum(float(t["cpu_seconds"] or 0) for t in trials if t["state"] == "pruned")
    members = [{**t, "position": t["number"]} for t in trials]
    return {
        "study_id": study["id"],
        "name": study["name"],
        "state": study["state"],
        "reason": study["reason"],
        "created_at": study["created_at"],
        "finished_at": study["finished_at"],
        "sampler": study["sampler"],
        "pruner": study["pruner"],
        "objectives": [
            {"metric": metric, "direction": direction}
            for metric, direction in zip(study["objectives"], study["directions"], strict=True)
        ],
        "base": study["base"],
        "space": study["space"],
        "budget": {
            "n_trials": study["n_trials"],
            "cpu_seconds": study["cpu_seconds"],
            "max_parallel": study["max_parallel"],
        },
        "progress": {
            "trials": len(trials),
            **{
                state: states.get(state, 0) for state in ("running", "complete", "pruned", "failed", "reused")
            },
            "cpu_seconds": round(cpu, 3),
            "pruned_cpu_seconds": round(pruned_cpu, 3),
        },
        "best": [_trial(t) for t in best_trials(study, trials)],
        # N = every trial asked, failed and pruned ones included: each was a chance at a lucky backtest.
        "best_by_sharpe": sweeps.best_by_sharpe(members),
        "best_so_far": best_so_far(study, trials),
        "importances": importances(study, trials) if with_importances else None,
        "mutations": mutations(study, trials) if study["sampler"] == "evolution" else None,
        "trials": [_trial(t) for t in trials],
    }


def render(board: dict[str, Any]) -> str:
    """The CLI's view of a study: progress, best, leaderboard of its trials."""
    progress = board["progress"]
    objectives = ", ".join(f"{o['metric']} ({o['direction']})" for o in board["objectives"])
    lines = [
        f"study {board['study_id']}{' ' + board['name'] if board['name'] else ''}: {board['state']}"
        + (f" ({board['reason']})" if board["reason"] else ""),
        f"sampler {board['sampler']}, pruner {board['pruner']}, objective {objectives}",
        f"trials {progress['trials']}: "
        + ", ".join(f"{s} {progress[s]}" for s in SHOWN_STATES)
        + f"; {progress['cpu_seconds']:.1f} core-seconds "
        + f"({progress['pruned_cpu_seconds']:.1f} in pruned trials)",
    ]
    for trial in board["best"]:
        lines.append(
            f"best: trial {trial['number']} model {trial['model_id']} "
            f"values {trial['values']} {trial['params']}"
        )
    if best := board["best_by_sharpe"]:
        lines.append(
            f"best by Sharpe: model {best['model_id']} (Sharpe {best['sharpe']:.2f}): deflated Sharpe ratio "
            f"{best['deflated_sharpe_ratio']:.3f} after {best['trials']} trials"
        )
    if board["importances"] and board["importances"]["values"]:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in board["importances"]["values"].items())
        lines.append(f"importances (fANOVA): {shares}")
    sign = 1 if board["objectives"][0]["direction"] == "maximize" else -1
    ranked = sorted(
        board["trials"],
        key=lambda t: (not t["values"], -sign * t["values"][0] if t["values"] else 0, t["number"]),
    )
    lines.append(f"{'trial':>5} {'model':>7} {'state':<9} {'value':>10}  params")
    for trial in ranked[:20]:
        value = f"{trial['values'][0]:.4f}" if trial["values"] and math.isfinite(trial["values"][0]) else "-"
        lines.append(
            f"{trial['number']:>5} {trial['model_id'] or '-':>7} {trial['state']:<9} {value:>10}  "
            f"{trial['params']}"
        )
    return "\n".join(lines)
