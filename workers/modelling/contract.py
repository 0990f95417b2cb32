"""Export the registries as the database's contract:
`python -m workers.modelling.contract > sql/schema/registry.sql`.

The database refuses a request before any job exists, so it needs to know which algorithms,
hyperparameters (names, defaults, allowed values), features, regime kinds and backtest strategies (and
their parameters) there are. They come from here, from scikit-learn's own parameter constraints and the
regimes' and strategies' own declarations, and `tests/test_contract.py` fails when the file is stale.

So does the vocabulary the request's checks share with the workers: the target columns, the target
transforms, the CV strategies, the timeframe syntax and the window rule's rows per fold. The file defines
them as IMMUTABLE SQL functions (inlined, so a check that calls one costs what a literal did), written
from the Python that uses them.
"""

from __future__ import annotations

import json
import numbers
import sys
from typing import Any

from sklearn.utils._param_validation import Hidden, Interval, StrOptions

from queue_app import search
from workers.modelling.algorithms import ALGORITHMS, CONTROLLED_PARAMS, Algorithm
from workers.modelling.backtest import STRATEGIES, TIMEFRAME, Strategy
from workers.modelling.evaluation import DEFAULT_REFIT_EVERY, KINDS, WINDOWS
from workers.modelling.features import FEATURES
from workers.modelling.regimes import REGIMES, Regime
from workers.modelling.splits import MIN_FIT_ROWS, SPLITTERS
from workers.modelling.training import TARGET_COLUMNS, TRANSFORMS, WARMUP_BARS


def _interval_rule(interval: Interval) -> dict[str, Any]:
    is_integer = interval.type is numbers.Integral
    rule: dict[str, Any] = {"type": "integer" if is_integer else "number"}
    if interval.type is not numbers.Integral and interval.type is not numbers.Real:
        rule["not_integer"] = True  # RealNotInt: an integral value means something else
    if interval.left is not None:
        rule["min"] = interval.left
        rule["min_open"] = interval.closed in ("right", "neither")
    if interval.right is not None:
        rule["max"] = interval.right
        rule["max_open"] = interval.closed in ("left", "neither")
    return rule


def _constraint_rule(constraint: Any) -> dict[str, Any] | None:
    """The JSON shape of one scikit-learn constraint, or None when JSON cannot express it."""
    if isinstance(constraint, Hidden):
        return None
    if isinstance(constraint, Interval):
        return _interval_rule(constraint)
    if isinstance(constraint, StrOptions):
        return {"type": "string", "enum": sorted(constraint.options - (constraint.deprecated or set()))}
    simple = {None: "null", "boolean": "boolean", str: "string", bool: "boolean"}
    if isinstance(constraint, str | type | None) and constraint in simple:
        return {"type": simple[constraint]}
    return None


def _describe(rule: dict[str, Any]) -> str:
    if "enum" in rule:
        return "one of " + ", ".join(json.dumps(option) for option in rule["enum"])
    if rule["type"] in ("null", "boolean", "string"):
        return rule["type"]
    low = "(" if rule.get("min_open") else "["
    high = ")" if rule.get("max_open") else "]"
    kind = "float" if rule.get("not_integer") else rule["type"]
    if "min" in rule and "max" in rule:
        return f"{kind} in {low}{rule['min']}, {rule['max']}{high}"
    if "min" in rule:
        return f"{kind} {'>' if rule.get('min_open') else '>='} {rule['min']}"
    if "max" in rule:
        return f"{kind} {'<' if rule.get('max_open') else '<='} {rule['max']}"
    return kind


def _json_default(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else None


def hyperparameter_contract(algorithm: Algorithm) -> dict[str, Any]:
    """Every settable parameter of the estimator: its default and the values JSON may give it."""
    defaults = algorithm.estimator().get_params()
    contract = {}
    for name, constraints in sorted(algorithm.estimator._parameter_constraints.items()):
        if name in CONTROLLED_PARAMS or name not in defaults:
            continue
        rules = [rule for rule in map(_constraint_rule, constraints) if rule is not None]
        if all(rule["type"] == "null" for rule in rules):
            continue  # only expressible as its default: nothing a spec could set
        default = _json_default(defaults[name])
        enums = [option for rule in rules for option in rule.get("enum", [])]
        if isinstance(default, str) and enums and default not in enums:
            continue  # a deprecation sentinel (GradientBoosting's criterion="deprecated"): not settable
        contract[name] = {
            "default": default,
            "rules": rules,
            "expects": " or ".join(_describe(rule) for rule in rules),
        }
    return contract


def _declared_contract(entry: Regime | Strategy) -> dict[str, Any]:
    return {
        "description": entry.description,
        "parameters": {
            name: {**declared, "expects": " or ".join(_describe(rule) for rule in declared["rules"])}
            for name, declared in sorted(entry.declarations.items())
        },
    }


def regime_contract(regime: Regime) -> dict[str, Any]:
    """A regime kind's description and parameters, in the hyperparameters' format."""
    return _declared_contract(regime)


def strategy_contract(strategy: Strategy) -> dict[str, Any]:
    """A backtest strategy's description and parameters (the same for every strategy), in that format."""
    return _declared_contract(strategy)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _text_array(values: Any) -> str:
    return "ARRAY[" + ", ".join(_literal(value) for value in values) + "]::text[]"


def _vocabulary_function(name: str, arguments: str, result: str, body: str, comment: str) -> list[str]:
    return [
        f"-- {comment}",
        f"CREATE OR REPLACE FUNCTION {name}({arguments}) RETURNS {result}",
        "    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$",
        f"    SELECT {body}",
        "$$;",
    ]


def vocabulary() -> list[str]:
    """The SQL functions of the vocabulary the database's checks share with the workers."""
    assert TIMEFRAME.pattern.startswith("^") and TIMEFRAME.pattern.endswith("$"), "anchored, as in SQL"
    return [
        *_vocabulary_function(
            "sfq_target_columns", "", "text[]", _text_array(TARGET_COLUMNS),
            "The prices a spec's target_col may name (workers/training.py TARGET_COLUMNS).",
        ),
        *_vocabulary_function(
            "sfq_target_transforms", "", "text[]", _text_array(TRANSFORMS),
            "A spec's target_transform (workers/training.py TRANSFORMS).",
        ),
        *_vocabulary_function(
            "sfq_cv_strategies", "", "text[]", _text_array(SPLITTERS),
            "A spec's cv_strategy (workers/splits.py SPLITTERS).",
        ),
        *_vocabulary_function(
            "sfq_timeframe_pattern", "", "text", _literal(TIMEFRAME.pattern),
            "A timeframe such as 1d, 4h, 15m or 1mo (workers/simulation.py TIMEFRAME, the same regex).",
        ),
        *_vocabulary_function(
            "sfq_evaluation_kinds", "", "text[]", _text_array(KINDS),
            "A spec's evaluation kind (workers/modelling/evaluation.py KINDS).",
        ),
        *_vocabulary_function(
            "sfq_walk_forward_windows", "", "text[]", _text_array(WINDOWS),
            "A walk-forward's training window (workers/modelling/evaluation.py WINDOWS).",
        ),
        *_vocabulary_function(
            "sfq_default_refit_every", "", "integer", str(DEFAULT_REFIT_EVERY),
            "A walk-forward's bars between refits by default (evaluation.py DEFAULT_REFIT_EVERY).",
        ),
        *_vocabulary_function(
            "sfq_warmup_bars", "", "integer", str(WARMUP_BARS),
            "Bars of history before a model's first usable row, for its features (training.py WARMUP_BARS).",
        ),
        *_vocabulary_function(
            "sfq_min_fit_rows", "", "integer", str(MIN_FIT_ROWS),
            "Rows a CV fold is fitted on and scored on at least (workers/splits.py MIN_FIT_ROWS).",
        ),
        *_vocabulary_function(
            "sfq_min_train_window", "cv_folds integer, horizon integer", "integer",
            f"(cv_folds + 1) * (horizon + {MIN_FIT_ROWS})",
            "The shortest train_window for cv_folds folds: (cv_folds + 1) x (horizon + MIN_FIT_ROWS) bars.",
        ),
        *_vocabulary_function(
            "sfq_study_objectives", "", "jsonb",
            _literal(json.dumps({name: way for name, (_, way) in search.OBJECTIVES.items()})) + "::jsonb",
            "A study's objectives and their default directions (queue_app/search.py OBJECTIVES).",
        ),
        *_vocabulary_function(
            "sfq_study_samplers", "", "jsonb",
            _literal(json.dumps({
                name: {"multi_objective": sampler.multi_objective, "discrete": sampler.discrete}
                for name, sampler in search.SAMPLERS.items()
            })) + "::jsonb",
            "A study's samplers and what each can search (queue_app/search.py SAMPLERS).",
        ),
        *_vocabulary_function(
            "sfq_study_pruners", "", "text[]", _text_array(search.PRUNERS),
            "A study's pruners (queue_app/search.py PRUNERS).",
        ),
    ]  # fmt: skip


def render() -> str:
    algorithms = {name: hyperparameter_contract(algorithm) for name, algorithm in ALGORITHMS.items()}
    regimes = {name: regime_contract(regime) for name, regime in REGIMES.items()}
    strategies = {name: strategy_contract(strategy) for name, strategy in STRATEGIES.items()}
    features = [
        {"name": f.name, "description": f.description, "is_default": f.default} for f in FEATURES.values()
    ]
    lines = [
        "-- Generated by `python -m workers.modelling.contract > sql/schema/registry.sql`; do not edit.",
        "-- The registries (which algorithms, features, regimes and strategies a request may name) and the",
        "-- vocabulary the request's checks share with the workers. The first of sql/schema/'s repeatable",
        "-- files: applied by `sfq db upgrade` whenever a migration ran or one of them changed.",
        *vocabulary(),
        "DELETE FROM sfq_algorithms;",
        "INSERT INTO sfq_algorithms (name, hyperparameters)",
        "SELECT key, value FROM jsonb_each($json$",
        json.dumps(algorithms, indent=1, sort_keys=True),
        "$json$::jsonb);",
        "DELETE FROM sfq_features;",
        "INSERT INTO sfq_features (name, description, is_default, position)",
        "SELECT f->>'name', f->>'description', (f->>'is_default')::boolean, ordinality",
        "FROM jsonb_array_elements($json$",
        json.dumps(features, indent=1),
        "$json$::jsonb) WITH ORDINALITY AS t(f, ordinality);",
        "DELETE FROM sfq_regimes;",
        "INSERT INTO sfq_regimes (name, description, parameters)",
        "SELECT key, value->>'description', value->'parameters' FROM jsonb_each($json$",
        json.dumps(regimes, indent=1, sort_keys=True),
        "$json$::jsonb);",
        "DELETE FROM sfq_strategies;",
        "INSERT INTO sfq_strategies (name, description, parameters)",
        "SELECT key, value->>'description', value->'parameters' FROM jsonb_each($json$",
        json.dumps(strategies, indent=1, sort_keys=True),
        "$json$::jsonb);",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
