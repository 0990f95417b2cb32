"""The probability of backtest overfitting (PBO) of choosing the best of many strategies, by
combinatorially symmetric cross-validation (CSCV: Bailey, Borwein, Lopez de Prado and Zhu, "The
Probability of Backtest Overfitting", Journal of Computational Finance, 2017).

The per-bar returns of N strategies over the same T bars are cut into S blocks of consecutive bars
(T // S bars each; the first T mod S bars are dropped). For each of the C(S, S/2) ways to take half
the blocks as the in-sample set (the other half out of sample): n* = the strategy with the highest
in-sample Sharpe ratio; w = its rank among the N strategies out of sample (1 = worst, ties share
their mean rank) divided by N + 1; its logit = ln(w / (1 - w)). PBO = the share of the combinations
whose logit is <= 0: where the in-sample best did no better than the median strategy out of sample.
About 0.5 when no strategy has skill, near 0 when the in-sample best is also the best out of sample.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

DEFAULT_PARTITIONS = 16
MIN_BLOCK_BARS = 2  # a Sharpe ratio needs two returns per block at least
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _sharpes(mask: np.ndarray, sums: np.ndarray, squares: np.ndarray, bars: int) -> np.ndarray:
    """Per-bar Sharpe ratio of every strategy (columns) over the blocks each row of `mask` selects,
    from the blocks' sums and sums of squares; 0 for a strategy that never varies and earns 0."""
    total, total_squares = mask @ sums, mask @ squares
    mean = total / bars
    variance = np.maximum(total_squares - bars * mean**2, 0.0) / (bars - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = mean / np.sqrt(variance)
    return np.where(variance > 0, sharpe, np.sign(mean) * np.inf)


def _logit_summary(logits: np.ndarray) -> dict[str, Any]:
    finite = logits[np.isfinite(logits)]
    edges = np.histogram_bin_edges(finite, bins=10) if finite.size else np.array([])
    counts = np.histogram(finite, bins=edges)[0] if finite.size else np.array([])
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "quantiles": {f"{q:g}": float(np.quantile(logits, q)) for q in QUANTILES},
        "histogram": [
            {"from": float(low), "to": float(high), "count": int(count)}
            for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True)
        ],
    }


def probability_of_overfitting(returns: np.ndarray, partitions: int = DEFAULT_PARTITIONS) -> dict[str, Any]:
    """PBO of picking the best (by Sharpe ratio) of the columns of `returns` (T bars x N strategies),
    with its logit distribution (mean, quantiles, a 10-bin histogram of the finite ones)."""
    returns = np.asarray(returns, dtype=float)
    n_bars, strategies = returns.shape
    if strategies < 2:
        raise ValueError(f"PBO needs at least 2 strategies, got {strategies}")
    if partitions < 2 or partitions % 2:
        raise ValueError(f"partitions must be an even number >= 2, got {partitions}")
    size = n_bars // partitions
    if size < MIN_BLOCK_BARS:
        raise ValueError(
            f"{n_bars} bars make blocks of {size} bar(s) in {partitions} partitions; "
            f"PBO needs at least {MIN_BLOCK_BARS * partitions} bars"
        )
    blocks = returns[n_bars - size * partitions :].reshape(partitions, size, strategies)
    sums, squares = blocks.sum(axis=1), (blocks**2).sum(axis=1)
    chosen = np.array(list(itertools.combinations(range(partitions), partitions // 2)))
    in_sample = np.zeros((len(chosen), partitions))
    in_sample[np.arange(len(chosen))[:, None], chosen] = 1.0
    half = size * partitions // 2
    sharpe_in = _sharpes(in_sample, sums, squares, half)
    sharpe_out = _sharpes(1.0 - in_sample, sums, squares, half)
    best = np.argmax(sharpe_in, axis=1)
    out_of_best = sharpe_out[np.arange(len(chosen)), best][:, None]
    rank = (sharpe_out < out_of_best).sum(axis=1) + ((sharpe_out == out_of_best).sum(axis=1) + 1) / 2
    relative = rank / (strategies + 1)
    logits = np.log(relative / (1.0 - relative))
    return {
        "pbo": float(np.mean(logits <= 0)),
        "partitions": partitions,
        "combinations": len(chosen),
        "strategies": strategies,
        "bars": size * partitions,
        "logits": _logit_summary(logits),
    }
