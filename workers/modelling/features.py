"""Feature registry: every feature a spec may name, computed from bars at or before its row only.

Row t of every feature uses bars up to and including bar t (known once bar t has closed); the target
looks at t + horizon. Nothing here may look forward: `tests/test_training.py` trains on a random walk
and checks that no skill appears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workers.modelling.registry import by_name

FeatureFn = Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    compute: FeatureFn
    default: bool
    lookback: int  # the most bars before t that row t's value depends on (for the purged k-fold's embargo)


def _log_return(lag: int) -> FeatureFn:
    return lambda bars: np.log(bars["close"] / bars["close"].shift(lag))


def _volatility(window: int) -> FeatureFn:
    return lambda bars: np.log(bars["close"] / bars["close"].shift(1)).rolling(window).std()


def _ma_ratio(window: int) -> FeatureFn:
    return lambda bars: bars["close"] / bars["close"].rolling(window).mean() - 1.0


def _rsi(window: int) -> FeatureFn:
    def compute(bars: pd.DataFrame) -> pd.Series:
        change = bars["close"].diff()
        gain = change.clip(lower=0).ewm(alpha=1 / window, adjust=False, min_periods=window).mean()
        loss = (-change.clip(upper=0)).ewm(alpha=1 / window, adjust=False, min_periods=window).mean()
        return 100.0 - 100.0 / (1.0 + gain / loss.replace(0.0, np.nan))

    return compute


def _volume_z(window: int) -> FeatureFn:
    def compute(bars: pd.DataFrame) -> pd.Series:
        volume = np.log1p(bars["volume"].astype(float))
        rolling = volume.rolling(window)
        return (volume - rolling.mean()) / rolling.std().replace(0.0, np.nan)

    return compute


def _high_low_range(bars: pd.DataFrame) -> pd.Series:
    return (bars["high"] - bars["low"]) / bars["close"]


def _overnight_gap(bars: pd.DataFrame) -> pd.Series:
    return np.log(bars["open"] / bars["close"].shift(1))


FEATURES: dict[str, Feature] = by_name(
    *(
        Feature(f"ret_{k}", f"log return of close over {k} bars", _log_return(k), True, k)
        for k in (1, 2, 5, 10, 20)
    ),
    Feature("ret_60", "log return of close over 60 bars", _log_return(60), False, 60),
    *(
        Feature(f"vol_{w}", f"std of 1-bar log returns over {w} bars", _volatility(w), True, w)
        for w in (5, 20)
    ),
    Feature("vol_60", "std of 1-bar log returns over 60 bars", _volatility(60), False, 60),
    *(
        Feature(f"ma_ratio_{w}", f"close / {w}-bar moving average - 1", _ma_ratio(w), True, w - 1)
        for w in (5, 20, 50)
    ),
    Feature("ma_ratio_200", "close / 200-bar moving average - 1", _ma_ratio(200), False, 199),
    # Wilder's smoothing never forgets; bars older than 63 weigh less than 1 % ((13/14)^63 < 0.01).
    Feature("rsi_14", "Wilder's relative strength index over 14 bars", _rsi(14), True, 63),
    Feature("hl_range", "(high - low) / close of the bar", _high_low_range, True, 0),
    Feature("volume_z_20", "z-score of log volume against its last 20 bars", _volume_z(20), True, 19),
    Feature("overnight_gap", "log(open / previous close)", _overnight_gap, False, 1),
)

DEFAULT_FEATURES: tuple[str, ...] = tuple(name for name, feature in FEATURES.items() if feature.default)


def lookback(names: list[str]) -> int:
    """The most bars before t that any of these features depends on."""
    return max((FEATURES[name].lookback for name in names), default=0)


def compute_features(bars: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One column per requested feature, indexed like `bars`; warm-up rows hold NaN."""
    return pd.DataFrame({name: FEATURES[name].compute(bars) for name in names}, index=bars.index).replace(
        [np.inf, -np.inf], np.nan
    )


STALE_BARS = 5  # a context bar is carried forward over at most this many of the symbol's bars (holidays)


def aligned_features(bars: pd.DataFrame, names: list[str], index: pd.Index, prefix: str) -> pd.DataFrame:
    """Features of another symbol's `bars` placed on `index` (the traded symbol's timestamps): at t, the
    values of that symbol's last bar at or before t, never a later one, and no older than STALE_BARS of
    the symbol's bars (a context that stopped trading leaves its columns empty rather than frozen);
    columns named prefix + name."""
    return compute_features(bars, names).add_prefix(prefix).reindex(index, method="ffill", limit=STALE_BARS)
