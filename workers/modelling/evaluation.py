"""How a model is judged out of sample: on one held-out window (`holdout`, the default), or by walk-forward
evaluation over the whole history (`walk_forward`): refit every `refit_every` bars on the rows before
each block, predict the block, and stitch the blocks' predictions together.

Pure computation, like training: the caller gives the features and labels of every bar (computed once
for the whole history) and gets the out-of-sample predictions and the last fitted model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

KINDS = ("holdout", "walk_forward")
WINDOWS = ("expanding", "sliding")  # fit on every row before the block, or the last train_window of them
DEFAULT_REFIT_EVERY = 21


@dataclass(frozen=True)
class Evaluation:
    """A spec's `evaluation` (absent: holdout): canonical in the database, read here."""

    kind: str
    refit_every: int = DEFAULT_REFIT_EVERY
    window: str = "expanding"
    start: pd.Timestamp | None = None

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Evaluation:
        given = spec.get("evaluation") or {"kind": "holdout"}
        start = given.get("start")
        return cls(
            given["kind"],
            given.get("refit_every", DEFAULT_REFIT_EVERY),
            given.get("window", "expanding"),
            pd.Timestamp(start) if start else None,
        )


@dataclass
class Block:
    """One refit: the rows it is fitted on and the rows it predicts (positions in the usable rows)."""

    fit: slice
    predict: slice


def blocks(
    positions: np.ndarray, index: pd.Index, evaluation: Evaluation, train_window: int, reach: int
) -> list[Block]:
    """The refits over usable rows whose bar positions are `positions` (and timestamps `index`).

    The first predicted row is the first at or after `start` with train_window rows whose labels were
    known by then (a label reaches `reach` bars past its row); then one block every refit_every rows to
    the last row. Each block is fitted on the rows whose labels end before its first row's bar: all of
    them (expanding) or the last train_window (sliding)."""
    known = np.searchsorted(positions, positions - reach, side="left")  # rows whose label ends before
    eligible = np.flatnonzero(known >= train_window)
    if not len(eligible):
        return []
    begin = int(eligible[0])
    if evaluation.start is not None:
        begin = max(begin, int(np.searchsorted(index, evaluation.start, side="left")))
    result = []
    for row in range(begin, len(positions), evaluation.refit_every):
        end = int(known[row])
        start = 0 if evaluation.window == "expanding" else end - train_window
        result.append(Block(slice(start, end), slice(row, min(row + evaluation.refit_every, len(positions)))))
    return result


def walk_forward(
    X: pd.DataFrame,
    y: pd.Series,
    plan: list[Block],
    fit: Callable[[pd.DataFrame, pd.Series], tuple[BaseEstimator, dict[str, float]]],
    progress: Callable[[int, int], None],
) -> tuple[np.ndarray, BaseEstimator, dict[str, float]]:
    """Every block of `plan`: `fit` on its fitted rows, predict its rows. Returns the stitched
    predictions (one per predicted row, in order), the last fitted model and its chosen grid values.
    `progress(k, n)` is told as refit k of n starts."""
    predicted = np.empty(plan[-1].predict.stop - plan[0].predict.start)
    offset = plan[0].predict.start
    model, chosen = None, {}
    for k, block in enumerate(plan, start=1):
        progress(k, len(plan))
        model, chosen = fit(X.iloc[block.fit], y.iloc[block.fit])
        rows = block.predict
        predicted[rows.start - offset : rows.stop - offset] = model.predict(X.iloc[rows])
    return predicted, model, chosen
