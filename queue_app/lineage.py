"""Evolution chains: a model's ancestors and descendants, each with what changed against its parent
and how its main metrics moved. Shared by GET /models/{id}/lineage and `sfq lineage`; `spec_differences`
(several specs at once) also by the dashboard's comparison page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Held-out and cross-validated scores a researcher compares along a chain.
MAIN_METRICS = ("directional_accuracy", "ic", "r2", "rmse", "cv_directional_accuracy_mean", "cv_r2_mean")


def spec_differences(specs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The fields whose values are not the same in every spec, each with its value in each spec (in the
    specs' order; a missing field is None). Hyperparameters are compared key by key
    (`hyperparameters.max_depth`) when every spec has them as an object."""
    differ: dict[str, list[Any]] = {}
    for field in sorted(set().union(*(spec.keys() for spec in specs))):
        values = [spec.get(field) for spec in specs]
        if field == "hyperparameters" and all(isinstance(value, dict) for value in values):
            for name in sorted(set().union(*(value.keys() for value in values))):
                each = [value.get(name) for value in values]
                if any(v != each[0] for v in each[1:]):
                    differ[f"hyperparameters.{name}"] = each
        elif any(value != values[0] for value in values[1:]):
            differ[field] = values
    return differ


def spec_changes(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Field by field; hyperparameters key by key (`hyperparameters.max_depth`)."""
    return {
        field: {"from": before, "to": after}
        for field, (before, after) in spec_differences([parent, child]).items()
    }


def _number(value: Any) -> float | None:
    """A metric as a number, or None (metrics imported from the old service may hold anything)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def metric_changes(parent: dict[str, Any] | None, child: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    parent, child = parent or {}, child or {}
    moved = {}
    for name in MAIN_METRICS:
        before, after = _number(parent.get(name)), _number(child.get(name))
        if before is None and after is None:
            continue
        change = after - before if before is not None and after is not None else None
        moved[name] = {"parent": before, "value": after, "change": change}
    return moved


def build(model_id: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of the `lineage` query (ordered by depth) -> the chain, each model with its changes."""
    by_id = {row["id"]: row for row in rows}
    models = []
    for row in rows:
        parent = by_id.get(row["parent_model_id"])
        models.append(
            {
                "id": row["id"],
                "parent_model_id": row["parent_model_id"],
                "retrain_of": row["retrain_of"],
                "depth": row["depth"],
                "status": row["status"],
                "symbol": row["symbol"],
                "algorithm": row["algorithm"],
                "target_col": row["target_col"],
                "fingerprint": row["fingerprint"],
                "submitted_at": row["submitted_at"],
                "metrics": {name: _number((row["metrics"] or {}).get(name)) for name in MAIN_METRICS},
                "changes": spec_changes(parent["spec"], row["spec"]) if parent else None,
                "metric_changes": metric_changes(parent["metrics"], row["metrics"]) if parent else None,
            }
        )
    return {"model_id": model_id, "root": rows[0]["id"], "models": models}


def render(chain: dict[str, Any]) -> str:
    """A text tree for the CLI: one line per model, indented by depth, its changes and metric moves."""
    lowest = min(model["depth"] for model in chain["models"])
    lines = []
    for model in chain["models"]:
        indent = "  " * (model["depth"] - lowest)
        marker = "*" if model["id"] == chain["model_id"] else " "
        metrics = model["metrics"]
        score = " ".join(
            f"{name}={metrics[name]:.4f}"
            for name in ("directional_accuracy", "ic", "r2")
            if metrics.get(name)
        )
        lines.append(
            f"{marker}{indent}model {model['id']} ({model['status']}) {model['symbol']} {model['algorithm']} "
            f"{model['target_col']}  {score}".rstrip()
        )
        for field, change in (model["changes"] or {}).items():
            lines.append(f" {indent}    {field}: {change['from']!r} -> {change['to']!r}")
        for name, moved in (model["metric_changes"] or {}).items():
            if moved["change"] is not None:
                lines.append(f" {indent}    {name}: {moved['change']:+.4f}")
    return "\n".join(lines)
