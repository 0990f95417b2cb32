"""Cross-validation splitters over the training window, by name (a spec's `cv_strategy`).

Every splitter keeps at least `horizon` rows between the rows a fold is fitted on and the rows it scores,
so that no training target (which looks `horizon` bars ahead) overlaps a scored one. They follow
scikit-learn's splitter interface (`split(X)`, `get_n_splits()`), so they also work inside GridSearchCV.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.model_selection import TimeSeriesSplit

from queue_app.errors import SfqError

MIN_FIT_ROWS = 10  # a fold fitted on fewer rows would score noise, not the strategy
EMBARGO_SHARE = 0.01  # purged k-fold: rows embargoed after a scored fold, as a share of the window


class TooFewRows(SfqError):
    """The window is too short for the requested folds and gap; the message says what was asked."""


class PurgedKFold:
    """k contiguous folds, in order and each scored once (the scored fold may sit in the middle), as in
    de Prado's purged k-fold (Advances in Financial Machine Learning, ch. 7).

    A training row t is dropped when its label interval [t, t + horizon] overlaps the scored fold's
    (purging: the `horizon` rows before the fold), and so are the `embargo` rows after the fold, whose
    features would still carry the scored period's serial correlation: the longest of the horizon, the
    features' `lookback` (a row whose features reach back into the scored fold is embargoed) and 1 % of
    the rows.
    """

    def __init__(self, n_splits: int, horizon: int, lookback: int = 0):
        self.n_splits = n_splits
        self.horizon = horizon
        self.lookback = lookback

    def embargo(self, n_rows: int) -> int:
        return max(self.horizon, self.lookback, math.ceil(EMBARGO_SHARE * n_rows))

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return self.n_splits

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.arange(len(X))
        if self.n_splits > len(rows):
            raise ValueError(
                f"cannot have n_splits={self.n_splits} greater than the number of rows={len(rows)}"
            )
        embargo = self.embargo(len(rows))
        for scored in np.array_split(rows, self.n_splits):
            start, stop = scored[0], scored[-1] + 1
            yield np.concatenate([rows[: max(start - self.horizon, 0)], rows[stop + embargo :]]), scored

    def __repr__(self) -> str:
        return f"PurgedKFold(n_splits={self.n_splits}, horizon={self.horizon}, lookback={self.lookback})"


Splitter = TimeSeriesSplit | PurgedKFold
SplitterFactory = Callable[..., Splitter]  # (n_splits, horizon, n_rows, lookback=0)


def _checked(name: str, build: Callable[[int, int, int, int], Splitter]) -> SplitterFactory:
    """The factory `build`, refusing a window too short for its folds with a message a user can act on
    (rather than scikit-learn's ValueError, or an estimator fitted on a handful of rows). `lookback`:
    the most bars any feature looks back (only the purged k-fold, whose folds have training rows after
    the scored ones, needs it)."""

    def factory(n_splits: int, horizon: int, n_rows: int, lookback: int = 0) -> Splitter:
        splitter = build(n_splits, horizon, n_rows, lookback)
        try:
            folds = list(splitter.split(np.empty((n_rows, 1))))
        except ValueError:  # more folds than the rows (and the gap) allow
            folds = []
        if not folds or min(min(len(fit), len(scored)) for fit, scored in folds) < MIN_FIT_ROWS:
            raise TooFewRows(
                f"{name} CV with {n_splits} folds and horizon {horizon} needs more than {n_rows} rows "
                f"(every fold fits on and scores at least {MIN_FIT_ROWS} rows): "
                "use fewer cv_folds or a longer train_window"
            )
        return splitter

    return factory


def _sliding(n_splits: int, horizon: int, n_rows: int, _lookback: int) -> TimeSeriesSplit:
    """TimeSeriesSplit's folds, each fitted on as many rows as the first one (the latest of them)."""
    scored = n_rows // (n_splits + 1)
    return TimeSeriesSplit(n_splits, gap=horizon, max_train_size=n_rows - n_splits * scored - horizon)


SPLITTERS: dict[str, SplitterFactory] = {
    "expanding": _checked(
        "expanding", lambda n_splits, horizon, _rows, _lookback: TimeSeriesSplit(n_splits, gap=horizon)
    ),
    "sliding": _checked("sliding", _sliding),
    "purged": _checked(
        "purged", lambda n_splits, horizon, _rows, lookback: PurgedKFold(n_splits, horizon, lookback)
    ),
}
