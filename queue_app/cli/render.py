"""Text views the CLI prints: the models leaderboard (`sfq models`, the demo)."""

from __future__ import annotations

from typing import Any


def _metric(metrics: dict[str, Any], key: str, width: int, digits: int) -> str:
    value = metrics.get(key)
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def leaderboard(rows: list[dict[str, Any]]) -> str:
    """Rows of the list_models query, one line each, with the held-out metrics a researcher compares
    (directional accuracy next to its base rate: a `high` target moves up on most bars)."""
    lines = [
        f"{'id':>5}  {'status':<9} {'symbol':<6} {'algorithm':<20} {'target':<16} "
        f"{'dir.acc':>7} {'base':>5} {'ic':>7} {'r2':>8} {'rmse':>9}  worker"
    ]
    for row in rows:
        m = row["metrics"] or {}
        target = f"{row['target_col']}/{row['target_transform']}"
        worker = f"{row['worker_host']}:{row['worker_pid']}" if row["worker_pid"] else ""
        lines.append(
            f"{row['id']:>5}  {row['status']:<9} {row['symbol']:<6} {row['algorithm']:<20} {target:<16} "
            f"{_metric(m, 'directional_accuracy', 7, 3)} {_metric(m, 'directional_base_rate', 5, 2)} "
            f"{_metric(m, 'ic', 7, 3)} {_metric(m, 'r2', 8, 4)} {_metric(m, 'rmse', 9, 5)}"
            f"  {worker}"
        )
    return "\n".join(lines)
