"""Selection that counts every trial: the probability of backtest overfitting (CSCV) against worked
examples and a plain re-statement of the method, and a sweep's deflated Sharpe ratio of its best model
by Sharpe, whatever the sort, with every configuration counted.

No database: returns and leaderboard rows are made here.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from queue_app import stats, sweeps
from queue_app.overfitting import probability_of_overfitting
from queue_app.params import SweepQuery

# Two blocks of two bars, three strategies: s1 earns in block A and loses in B, s2 the reverse, s3 a
# little in both. Sharpe ratios (mean / stdev): s1 2.12 in A, -2.12 in B; s2 the reverse; s3 0.71.
A = [[0.02, -0.01, 0.00], [0.01, -0.02, 0.01]]
B = [[-0.02, 0.01, 0.01], [-0.01, 0.02, 0.00]]


def test_pbo_of_a_selection_that_always_fails_out_of_sample_is_1():
    """In-sample A picks s1, worst in B; in-sample B picks s2, worst in A: each time rank 1 of 3, so
    w = 1 / 4 and the logit is ln(1/3) for both splits; PBO = 2 / 2."""
    result = probability_of_overfitting(np.array(A + B), partitions=2)
    assert result["pbo"] == 1.0 and result["combinations"] == 2
    assert result["logits"]["quantiles"]["0.5"] == pytest.approx(math.log(1 / 3))
    assert result["logits"]["mean"] == pytest.approx(-math.log(3))


def test_pbo_of_a_strategy_best_everywhere_is_0():
    """s3 made to earn 3 to 4 % a bar in both blocks: chosen in sample either way, and best out of sample
    (rank 3 of 3, w = 3 / 4, logit ln 3)."""
    returns = np.array(A + B)
    returns[:, 2] = [0.03, 0.04, 0.03, 0.04]
    result = probability_of_overfitting(returns, partitions=2)
    assert result["pbo"] == 0.0
    assert result["logits"]["mean"] == pytest.approx(math.log(3))


def reference_pbo(returns: np.ndarray, partitions: int) -> tuple[float, list[float]]:
    """The paper's steps written out with loops and the statistics module."""
    n_bars, strategies = returns.shape
    size = n_bars // partitions
    blocks = [returns[n_bars - size * partitions :][k * size : (k + 1) * size] for k in range(partitions)]
    logits = []
    for chosen in itertools.combinations(range(partitions), partitions // 2):
        inside = np.concatenate([blocks[k] for k in chosen])
        outside = np.concatenate([blocks[k] for k in range(partitions) if k not in chosen])

        def sharpe(rows, j):
            return statistics.fmean(rows[:, j]) / statistics.stdev(rows[:, j])

        best = max(range(strategies), key=lambda j: sharpe(inside, j))
        out = [sharpe(outside, j) for j in range(strategies)]
        rank = sum(value < out[best] for value in out) + (sum(value == out[best] for value in out) + 1) / 2
        w = rank / (strategies + 1)
        logits.append(math.log(w / (1 - w)))
    return sum(logit <= 0 for logit in logits) / len(logits), logits


@pytest.mark.parametrize(("partitions", "seed"), [(4, 1), (6, 2), (8, 3)])
def test_pbo_matches_the_method_written_out(partitions, seed):
    returns = np.random.default_rng(seed).normal(0.0005, 0.01, (101, 7))  # 101: a remainder is dropped
    expected, logits = reference_pbo(returns, partitions)
    result = probability_of_overfitting(returns, partitions)
    assert result["pbo"] == pytest.approx(expected)
    assert result["combinations"] == math.comb(partitions, partitions // 2)
    assert result["bars"] == 101 // partitions * partitions
    assert result["logits"]["mean"] == pytest.approx(statistics.fmean(logits))


def test_pbo_tells_noise_from_skill():
    """Over many noise-only sweeps PBO averages about 0.5; with one truly better strategy it is near 0."""
    rng = np.random.default_rng(4)
    noise = [probability_of_overfitting(rng.normal(0, 0.01, (320, 20)), 8)["pbo"] for _ in range(40)]
    assert 0.35 < statistics.fmean(noise) < 0.65
    skilled = rng.normal(0, 0.01, (320, 20))
    skilled[:, 5] += 0.004
    assert probability_of_overfitting(skilled, 8)["pbo"] < 0.05


@pytest.mark.parametrize(
    ("shape", "partitions", "message"),
    [
        ((100, 1), 16, "at least 2 strategies"),
        ((100, 3), 5, "even number"),
        ((31, 3), 16, "at least 32 bars"),
    ],
)
def test_pbo_refuses_what_it_cannot_measure(shape, partitions, message):
    with pytest.raises(ValueError, match=message):
        probability_of_overfitting(np.zeros(shape), partitions)


def backtest(sharpe: float | None, n: int = 250) -> dict:
    return {"sharpe": sharpe, "periods_per_year": 252, "skewness": 0.0, "kurtosis": 3.0, "n": n}


def member(model_id: int, ic: float, backtested: dict | None, status: str = "completed") -> dict:
    return {
        "model_id": model_id,
        "position": model_id,
        "combination": {"n": model_id},
        "status": status,
        "symbol": "AAPL",
        "algorithm": "Ridge",
        "metrics": {"ic": ic},
        "backtest": backtested,
    }


def test_the_dsr_is_the_best_by_sharpes_with_every_configuration_counted():
    """Sorted by IC ascending, the first row is the worst by Sharpe; the DSR still belongs to the best by
    Sharpe. N = 5 configurations: the one that never traded (Sharpe 0 in the spread), the failed one
    and the unfinished one count too."""
    models = [
        member(1, 0.05, backtest(-1.5)),
        member(2, 0.5, backtest(2.5)),
        member(3, 0.9, backtest(None)),  # never traded: no Sharpe
        member(4, 0.2, None, "failed"),
        member(5, 0.3, None, "queued"),
    ]
    board = sweeps.leaderboard(models, SweepQuery(sort="ic", order="asc"), curves=[])
    assert board["rows"][0]["model_id"] == 1  # lowest IC: the worst Sharpe sorts first
    best = board["best_by_sharpe"]
    per_bar = [-1.5 / math.sqrt(252), 2.5 / math.sqrt(252), 0.0]
    expected = stats.deflated_sharpe(stats.per_period(backtest(2.5)), per_bar, trials=5)
    assert (best["model_id"], best["trials"], best["backtested"]) == (2, 5, 3)
    assert best["deflated_sharpe_ratio"] == pytest.approx(expected["deflated_sharpe_ratio"])
    # Counting the untried configurations raises the bar luck sets, so the DSR can only fall.
    assert (
        best["deflated_sharpe_ratio"]
        < stats.deflated_sharpe(stats.per_period(backtest(2.5)), per_bar)["deflated_sharpe_ratio"]
    )
    descending = sweeps.leaderboard(models, SweepQuery(sort="ic", order="desc"), curves=[])
    assert descending["best_by_sharpe"] == best and descending["rows"][0]["model_id"] == 3
    assert board["overfitting"] == {"pbo": None, "why": "needs 2 backtested models, has 0"}
