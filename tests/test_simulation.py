"""The backtest engine as pure computation: metrics against straightforward computations whose answers
are known, the one-bar delay (no lookahead), costs, position bounds, the buy-and-hold benchmark over the
same period, the equity curve, and parameter validation.

No database: bars are built from hand-made closes.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from workers.modelling import contract
from workers.modelling.backtest import (
    PARAMETERS,
    STRATEGIES,
    BacktestError,
    backtest,
    default_params,
    performance,
    periods_per_year,
    validate_params,
)
from workers.modelling.training import label

DAILY = 252


def make_bars(close: np.ndarray) -> pd.DataFrame:
    close = np.asarray(close, dtype=float)
    index = pd.date_range("2020-01-01", periods=len(close), freq="D", tz="UTC", name="ts")
    return pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1.0}, index=index
    )


def random_closes(n: int, seed: int) -> np.ndarray:
    return 100.0 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0.0, 0.01, n)))


def make_predictions(bars: pd.DataFrame, values: np.ndarray, start: int) -> pd.DataFrame:
    """One prediction per bar from `start` on."""
    index = bars.index[start : start + len(values)]
    return pd.DataFrame({"predicted": np.asarray(values, dtype=float)}, index=index)


def spec(**overrides: Any) -> dict[str, Any]:
    return {
        "timeframe": "1d",
        "target_col": "close",
        "target_transform": "log_return",
        "horizon": 1,
        "execution_lag": 1,
        "data_end": None,
        **overrides,
    }


def strategy_returns(result) -> np.ndarray:
    """Per-bar returns read back off the equity curve (exact to about 1e-16 in absolute terms)."""
    equity = np.array([value for _, value in result.equity_curve])
    return equity[1:] / equity[:-1] - 1.0


def market_returns(close: np.ndarray) -> np.ndarray:
    """market[j] = close[j] / close[j - 1] - 1, NaN for the first bar."""
    return np.concatenate([[np.nan], close[1:] / close[:-1] - 1.0])


# --- metrics ----------------------------------------------------------------------------------------


def test_constant_return_compounds_and_has_no_sharpe():
    r, n = 0.001, 100
    metrics = performance(np.full(n, r), DAILY)
    assert metrics["n"] == n
    assert metrics["total_return"] == pytest.approx((1 + r) ** n - 1, rel=1e-12)
    assert metrics["cagr"] == pytest.approx((1 + r) ** DAILY - 1, rel=1e-12)
    assert metrics["volatility"] == 0.0
    assert metrics["sharpe"] is None and metrics["psr"] is None  # zero variance: undefined, not inf
    assert metrics["sortino"] is None  # no losing bar
    assert metrics["max_drawdown"] == 0.0 and metrics["calmar"] is None
    assert metrics["win_rate"] == 1.0
    assert metrics["skewness"] is None and metrics["kurtosis"] is None


def test_drawdown_is_the_fall_from_the_running_peak():
    # Equity 1 -> 1.2 -> 0.9 -> 1.1: the fall from 1.2 to 0.9 is a quarter of the peak.
    returns = np.array([0.2, 0.9 / 1.2 - 1, 1.1 / 0.9 - 1])
    metrics = performance(returns, DAILY)
    assert metrics["max_drawdown"] == pytest.approx(0.25, rel=1e-12)
    assert metrics["total_return"] == pytest.approx(0.1, rel=1e-12)
    cagr = 1.1 ** (DAILY / 3) - 1
    assert metrics["cagr"] == pytest.approx(cagr, rel=1e-9)
    assert metrics["calmar"] == pytest.approx(cagr / 0.25, rel=1e-9)
    assert metrics["win_rate"] == pytest.approx(2 / 3)


def test_sharpe_sortino_and_volatility_on_a_hand_series():
    returns = [0.02, -0.01, 0.03, -0.02, 0.01]
    mean = sum(returns) / 5  # 0.006
    downside = math.sqrt((0.01**2 + 0.02**2) / 5)  # losses only, over all bars
    metrics = performance(np.array(returns), DAILY)
    assert metrics["volatility"] == pytest.approx(statistics.stdev(returns) * math.sqrt(DAILY), rel=1e-12)
    assert metrics["sharpe"] == pytest.approx(mean / statistics.stdev(returns) * math.sqrt(DAILY), rel=1e-12)
    assert metrics["sortino"] == pytest.approx(mean / downside * math.sqrt(DAILY), rel=1e-12)
    assert metrics["win_rate"] == pytest.approx(3 / 5)


def test_win_rate_counts_only_bars_with_a_position():
    returns = np.array([0.01, 0.0, 0.0, -0.01, 0.02, 0.0])
    held = np.array([True, False, False, True, True, False])
    assert performance(returns, DAILY, held)["win_rate"] == pytest.approx(2 / 3)
    assert performance(returns, DAILY)["win_rate"] == pytest.approx(2 / 6)
    assert performance(returns, DAILY, np.zeros(6, dtype=bool))["win_rate"] is None


def test_skewness_kurtosis_and_psr_match_their_definitions():
    returns = np.random.default_rng(5).standard_t(4, 500) * 0.01 + 0.001
    metrics = performance(returns, DAILY)
    assert metrics["skewness"] == pytest.approx(stats.skew(returns, bias=True), rel=1e-10)
    assert metrics["kurtosis"] == pytest.approx(stats.kurtosis(returns, fisher=False, bias=True), rel=1e-10)
    # Bailey & Lopez de Prado (2012), eq. for PSR(SR* = 0) with the per-period Sharpe.
    sr = np.mean(returns) / np.std(returns, ddof=1)
    g3, g4 = stats.skew(returns), stats.kurtosis(returns, fisher=False)
    expected = stats.norm.cdf(
        sr * math.sqrt(len(returns) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    )
    assert metrics["psr"] == pytest.approx(expected, rel=1e-9)
    assert metrics["sharpe"] == pytest.approx(sr * math.sqrt(DAILY), rel=1e-12)
    # A losing series is probably not a winning one.
    assert performance(-returns, DAILY)["psr"] == pytest.approx(1 - expected, rel=1e-9)


def test_metrics_are_json_safe_at_the_edges():
    for returns in (np.zeros(10), np.array([0.01]), np.array([-1.0, 0.5])):
        json.dumps(performance(returns, DAILY), allow_nan=False)
    single = performance(np.array([0.01]), DAILY)
    assert single["volatility"] is None and single["sharpe"] is None and single["n"] == 1
    # 1% a minute for 50 minutes, annualised, overflows: None, not inf.
    minutes = performance(np.full(50, 0.01), periods_per_year("1m"))
    assert minutes["cagr"] is None and minutes["total_return"] == pytest.approx(1.01**50 - 1)
    json.dumps(minutes, allow_nan=False)
    assert performance(np.array([-1.0, 0.5]), DAILY)["cagr"] == -1.0  # ruined
    with pytest.raises(BacktestError, match="no returns"):
        performance(np.array([]), DAILY)


@pytest.mark.parametrize(
    ("timeframe", "calendar", "expected"),
    [
        ("1d", "equity", 252),
        ("1w", "equity", 52),
        ("1mo", "equity", 12),
        ("1h", "equity", 252 * 7),  # a 6.5-hour session has 7 hourly bars, the last half an hour
        ("4h", "equity", 252 * 2),
        ("5m", "equity", 252 * 390 / 5),
        ("15m", "equity", 252 * 390 / 15),
        ("7m", "equity", 252 * 56),  # 390 / 7 = 55.7: 56 bars a session
        ("30s", "equity", 252 * 390 * 60 / 30),
        ("2d", "equity", 126),
        ("1d", "24x7", 365.25),
        ("1h", "24x7", 365.25 * 24),
        ("5m", "24x7", 365.25 * 288),
        ("1w", "24x7", 365.25 / 7),
        ("1mo", "24x7", 12),
    ],
)
def test_periods_per_year(timeframe, calendar, expected):
    assert periods_per_year(timeframe, calendar) == pytest.approx(expected, rel=1e-12)


def test_an_unknown_calendar_is_refused():
    with pytest.raises(BacktestError, match="calendar: 'lunar' is not one of equity, 24x7"):
        periods_per_year("1d", "lunar")


@pytest.mark.parametrize("timeframe", ["d", "0d", "1x", "1 d", "1D", ""])
def test_bad_timeframe_is_refused(timeframe):
    with pytest.raises(BacktestError, match="timeframe"):
        periods_per_year(timeframe)


# --- timing -----------------------------------------------------------------------------------------


def ohlc_bars(n: int, seed: int) -> pd.DataFrame:
    """A random walk whose open, high and low come from the same path as the close (the open a gap from
    the previous close, the high and low beyond both), so that the next open or high is information."""
    rng = np.random.default_rng(seed)
    close = random_closes(n, seed)
    open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0, 0.003, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.004, n)))
    bars = make_bars(close)
    return bars.assign(open=open_, high=high, low=low)


def sleeve_returns(bars: pd.DataFrame, positions: pd.Series, settings: dict[str, Any]) -> np.ndarray:
    """The stated convention written as a plain loop, for comparison: each signal t's position is a 1/h
    sleeve entered at close[t + L], earning close-to-close each bar and, on its last bar, up to
    target_col[t + L + h]."""
    lag, h, price = settings["execution_lag"], settings["horizon"], bars[settings["target_col"]].to_numpy()
    close = bars["close"].to_numpy()
    first = bars.index.get_loc(positions.index[0])
    start, end = first + lag, bars.index.get_loc(positions.index[-1]) + lag + h
    returns = np.zeros(end - start)
    for t, position in zip(range(first, first + len(positions)), positions.to_numpy(), strict=True):
        entry = t + lag
        for bar in range(entry + 1, entry + h + 1):
            exit_price = price[bar] if bar == entry + h else close[bar]
            returns[bar - start - 1] += position / h * (exit_price / close[bar - 1] - 1.0)
    return returns


@pytest.mark.parametrize("target_col", ["close", "open", "high", "low"])
@pytest.mark.parametrize("horizon", [1, 5])
def test_the_true_label_as_the_prediction_earns_perfect_foresight(target_col, horizon):
    """Feeding the label itself (`training.label`) as the "prediction" trades exactly it: every signal's
    position earns the label's absolute value (hit rate 1), and the per-bar returns are the stated
    sleeves' returns, for every horizon and target column: the perfect-foresight Sharpe."""
    bars = ohlc_bars(400, seed=21)
    settings = spec(target_col=target_col, horizon=horizon, target_transform="pct_change")
    target, entry = label(bars, settings)
    predictions = pd.DataFrame({"predicted": target.dropna().iloc[250:]})
    result = backtest(predictions, bars, settings, "long_short", {"cost_bps": 0})

    expected = sleeve_returns(bars, np.sign(predictions["predicted"]), settings)
    np.testing.assert_allclose(strategy_returns(result), expected, rtol=1e-9, atol=1e-14)
    assert result.metrics["hit_rate"] == 1.0
    if horizon == 1:  # one sleeve: each bar earns exactly |label|
        np.testing.assert_allclose(strategy_returns(result), np.abs(predictions["predicted"]), rtol=1e-9)
    # Nothing that trades these signals with less foresight does better: a random half of them reversed.
    flipped = predictions * np.where(np.random.default_rng(3).random(len(predictions)) < 0.5, -1, 1)[:, None]
    assert (
        backtest(flipped, bars, settings, "long_short", {"cost_bps": 0}).metrics["sharpe"]
        < (result.metrics["sharpe"])
    )


def test_the_old_label_traded_under_a_lag_is_a_coin_toss():
    """The convention this replaced: a "prediction" that knows close[t+1] / close[t] (the label from the
    signal's own close) is worth nothing traded from the close of t + 1: on a random walk, a Sharpe
    within noise of 0, though it is perfect foresight for execution_lag 0."""
    close = random_closes(2000, seed=2)
    bars = make_bars(close)
    start = 10
    next_bar = np.log(close[start + 1 :] / close[start:-1])
    predictions = make_predictions(bars, next_bar, start)
    lagged = backtest(predictions, bars, spec(), "long_short", {"cost_bps": 0})
    n = lagged.metrics["n"]
    assert abs(lagged.metrics["sharpe"]) < 4 * math.sqrt(DAILY / n)  # 4 standard errors of a null Sharpe
    at_once = backtest(predictions, bars, spec(execution_lag=0), "long_short", {"cost_bps": 0})
    assert at_once.metrics["hit_rate"] == 1.0 and at_once.metrics["sharpe"] > 10


def test_predictions_past_the_data_end_bar_are_not_traded():
    close = random_closes(60, seed=3)
    bars = make_bars(close)
    predictions = make_predictions(bars, np.full(40, 0.01), 10)  # bars 10 .. 49
    data_end = bars.index[45]
    result = backtest(predictions.loc[:data_end], bars, spec(data_end=data_end.isoformat()), "long_only")
    # Bars after data_end are ignored even when given: the last return is bar 45's, from bar 43's signal.
    assert result.period_start == bars.index[11] and result.period_end == data_end
    assert result.metrics["n"] == 45 - 11
    with pytest.raises(BacktestError, match="no bar to trade on"):
        backtest(
            predictions.loc[: bars.index[44]].iloc[-1:], bars, spec(data_end=bars.index[45]), "long_only"
        )


def test_raw_targets_trade_the_predicted_change_from_the_close():
    close = random_closes(40, seed=4)
    bars = make_bars(close)
    start = 5
    below = close[start:-2] - 1.0  # a level under the close: a fall predicted
    result = backtest(
        make_predictions(bars, below, start),
        bars,
        spec(target_transform="raw"),
        "long_short",
        {"cost_bps": 0},
    )
    np.testing.assert_allclose(
        strategy_returns(result), -market_returns(close)[start + 2 :], rtol=1e-9, atol=1e-15
    )


def test_a_bar_without_a_prediction_is_flat():
    close = random_closes(30, seed=6)
    bars = make_bars(close)
    predictions = make_predictions(bars, np.full(20, 0.01), 5).drop(bars.index[10])
    result = backtest(predictions, bars, spec(), "long_only", {"cost_bps": 0})
    returns = strategy_returns(result)
    assert returns[10 - 5] == 0.0  # bar 12, which bar 10's position would have earned
    np.testing.assert_allclose(np.delete(returns, 10 - 5), np.delete(market_returns(close)[7:27], 5))


# --- costs, bounds, sizing --------------------------------------------------------------------------


def test_flipping_every_bar_pays_the_cost_on_each_position_change():
    close = np.full(30, 100.0)  # flat prices: every return is the cost
    bars = make_bars(close)
    signs = np.resize([1.0, -1.0], 28)
    result = backtest(make_predictions(bars, signs, 0), bars, spec(), "long_short", {"cost_bps": 10})
    traded = np.abs(np.diff(signs, prepend=0.0))  # 1 to enter, then 2 per flip
    traded[-1] += 1  # and 1 to exit at the end
    np.testing.assert_allclose(strategy_returns(result), -10e-4 * traded, rtol=1e-9, atol=1e-15)
    assert result.metrics["n_trades"] == 28
    assert result.metrics["turnover"] == pytest.approx(traded.mean() * DAILY)
    assert result.metrics["exposure"] == 1.0
    # Long only: in and out, a cost of 1 x 10 bp at each change.
    long_only = backtest(make_predictions(bars, signs, 0), bars, spec(), "long_only", {"cost_bps": 10})
    held = (signs > 0).astype(float)
    np.testing.assert_allclose(
        strategy_returns(long_only),
        -10e-4 * np.abs(np.diff(held, append=0.0, prepend=0.0))[:-1] - np.r_[np.zeros(27), 10e-4 * held[-1]],
    )
    assert long_only.metrics["exposure"] == 0.5


def test_overlapping_sleeves_net_their_trades_and_an_exit_within_the_bar_is_charged():
    """h = 2 on flat prices, always long: two half sleeves, one rolling into the next at each close
    (nothing traded there); an open target's sleeve exits at the open, within the bar, and the next one
    enters at the close: both are charged."""
    bars = make_bars(np.full(12, 100.0))
    always = make_predictions(bars, np.full(6, 0.01), 0)
    close = backtest(always, bars, spec(horizon=2), "long_short", {"cost_bps": 10})
    # Bar 0: the first half sleeve enters; bar 1: the second; then each close's exit and entry net out;
    # bar 6: one half exits at its close, bar 7: the last half.
    np.testing.assert_allclose(
        strategy_returns(close), -10e-4 * np.array([0.5, 0.5, 0, 0, 0, 0, 0.5 + 0.5])[: close.metrics["n"]]
    )
    assert close.metrics["exposure"] == pytest.approx(np.mean([0.5, 1, 1, 1, 1, 1, 0.5]))
    opened = backtest(always, bars, spec(horizon=2, target_col="open"), "long_short", {"cost_bps": 10})
    assert opened.metrics["total_return"] < close.metrics["total_return"]  # a round trip per sleeve
    assert opened.metrics["n_trades"] == close.metrics["n"]


def test_long_only_is_never_short_and_positions_stay_within_the_cap():
    change = np.array([-0.5, -0.02, -0.001, 0.0, 0.001, 0.004, 0.02, 0.5, np.nan])
    proportional = validate_params({"sizing": "proportional", "scale": 0.01, "cap": 0.5})
    long_short = STRATEGIES["long_short"].positions(change, proportional)
    long_only = STRATEGIES["long_only"].positions(change, proportional)
    np.testing.assert_allclose(long_short, [-0.5, -0.5, -0.1, 0, 0.1, 0.4, 0.5, 0.5, 0])
    np.testing.assert_allclose(long_only, [0, 0, 0, 0, 0.1, 0.4, 0.5, 0.5, 0])
    fixed = validate_params({"threshold": 0.003, "cap": 0.8})
    np.testing.assert_allclose(
        STRATEGIES["long_short"].positions(change, fixed), [-0.8] * 2 + [0] * 3 + [0.8] * 3 + [0]
    )
    np.testing.assert_allclose(STRATEGIES["long_only"].positions(change, fixed), [0] * 5 + [0.8] * 3 + [0])

    close = random_closes(300, seed=8)
    bars = make_bars(close)
    predicted = np.random.default_rng(9).normal(0, 0.02, 298)
    for strategy, low in (("long_only", 0.0), ("long_short", -0.3)):
        result = backtest(
            make_predictions(bars, predicted, 0),
            bars,
            spec(),
            strategy,
            {"sizing": "proportional", "cap": 0.3, "cost_bps": 0},
        )
        held = strategy_returns(result) / market_returns(close)[2:]
        assert held.min() == pytest.approx(low) and held.max() == pytest.approx(0.3)


# --- benchmark and equity curve ---------------------------------------------------------------------


def test_buy_and_hold_covers_the_strategys_period_and_the_curve_ends_at_its_total_return():
    close = random_closes(120, seed=10)
    bars = make_bars(close)
    predicted = np.random.default_rng(11).normal(0, 0.01, 90)
    result = backtest(make_predictions(bars, predicted, 20), bars, spec(), "long_short")
    start, end = bars.index.get_loc(result.period_start), bars.index.get_loc(result.period_end)
    assert (start, end) == (21, 111)
    hold = result.metrics["buy_and_hold"]
    assert hold["total_return"] == pytest.approx(close[end] / close[start] - 1, rel=1e-12)
    assert hold["n"] == result.metrics["n"] == end - start
    assert hold["win_rate"] == pytest.approx(np.mean(market_returns(close)[start + 1 : end + 1] > 0))
    metrics = result.metrics
    assert metrics["excess_return"] == pytest.approx(metrics["total_return"] - hold["total_return"])
    assert metrics["excess_cagr"] == pytest.approx(metrics["cagr"] - hold["cagr"])

    curve = result.equity_curve
    assert curve[0] == [bars.index[start].isoformat(), 1.0]
    assert curve[-1][0] == bars.index[end].isoformat()
    assert curve[-1][1] == pytest.approx(1 + metrics["total_return"], rel=1e-12)
    assert len(curve) == metrics["n"] + 1
    assert result.params == default_params()
    json.dumps({"metrics": metrics, "curve": curve, "params": result.params}, allow_nan=False)


# --- parameters -------------------------------------------------------------------------------------


def test_params_are_completed_with_their_defaults_and_canonical():
    assert (
        validate_params({})
        == default_params()
        == {
            "threshold": 0.0,
            "sizing": "fixed",
            "scale": 0.01,
            "cap": 1.0,
            "cost_bps": 5.0,
        }
    )
    chosen = validate_params({"cost_bps": 0, "cap": 1})
    assert type(chosen["cost_bps"]) is float and chosen["cap"] == 1.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"stop_loss": 0.1},
            r"^stop_loss: unknown parameter; valid: cap, cost_bps, scale, sizing, threshold$",
        ),
        ({"cap": 0}, r"^cap: must be > 0, got 0$"),
        ({"cap": 1.5}, r"^cap: must be <= 1, got 1.5$"),
        ({"cost_bps": -1}, r"^cost_bps: must be >= 0"),
        ({"cost_bps": 1001}, r"^cost_bps: must be <= 1000"),
        ({"scale": 0.0}, r"^scale: must be > 0"),
        ({"threshold": "0.1"}, r"^threshold: must be a finite number .*, got '0.1'$"),
        ({"threshold": True}, r"^threshold: must be a finite number"),
        ({"threshold": float("nan")}, r"^threshold: must be a finite number"),
        ({"threshold": 10**400}, r"^threshold: must be a finite number \(at most 1e\+15 in size\)"),
        ({"sizing": "kelly"}, r"^sizing: must be one of fixed, proportional, got 'kelly'$"),
    ],
)
def test_bad_params_are_refused_naming_the_param(params, message):
    with pytest.raises(BacktestError, match=message):
        validate_params(params)
    bars = make_bars(random_closes(10, seed=0))
    with pytest.raises(BacktestError, match=message):
        backtest(make_predictions(bars, np.zeros(5), 0), bars, spec(), "long_short", params)


def test_unknown_strategy_and_predictions_without_bars_are_refused():
    bars = make_bars(random_closes(10, seed=0))
    predictions = make_predictions(bars, np.zeros(5), 0)
    with pytest.raises(BacktestError, match="^strategy: 'momentum' is not one of long_only, long_short$"):
        backtest(predictions, bars, spec(), "momentum")
    with pytest.raises(BacktestError, match="no bar to trade against"):
        backtest(predictions, bars.iloc[3:], spec(), "long_only")
    with pytest.raises(BacktestError, match="no predictions"):
        backtest(predictions.iloc[:0], bars, spec(), "long_only")


def test_the_exported_contract_is_the_declaration():
    """What the database validates POST /simulate with: the same parameters for every strategy, each
    default valid by its own rules."""
    for name, strategy in STRATEGIES.items():
        exported = contract.strategy_contract(strategy)
        assert exported["description"] == strategy.description
        assert {
            param: {k: v for k, v in declared.items() if k != "expects"}
            for param, declared in exported["parameters"].items()
        } == PARAMETERS, name
    expects = {param: declared["expects"] for param, declared in exported["parameters"].items()}
    assert expects == {
        "cap": "number in (0, 1]",
        "cost_bps": "number in [0, 1000]",
        "scale": "number > 0",
        "sizing": 'one of "fixed", "proportional"',
        "threshold": "number >= 0",
    }
    assert validate_params(default_params()) == default_params()
