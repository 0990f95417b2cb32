"""Loading a spec's bars: its symbol's and its context symbols', up to a pinned end, in one place for
training and for live forecasts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
import psycopg

from queue_app import gateway
from workers.modelling.training import bars_needed

COLUMNS = ["ts", "open", "high", "low", "close", "volume"]


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Bars as the database returns them (ts, open, high, low, close, volume), indexed by ts."""
    return pd.DataFrame(rows, columns=COLUMNS).set_index("ts")


def load_bars(
    db: psycopg.Connection, spec: dict[str, Any], data_end: datetime | str | None, everything: bool = False
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The latest `bars_needed(spec)` bars up to `data_end` of the symbol (`everything`: all of them);
    of each context symbol, the bars over the same period plus as many before it for warm-up (by time,
    not by count: a context symbol that trades on other days still covers the whole period)."""
    limit, timeframe = None if everything else bars_needed(spec), spec["timeframe"]
    bars = frame(gateway.run(db, gateway.load_bars(spec["symbol"], timeframe, data_end, limit)))
    since = bars.index[0] if len(bars) else data_end
    context = {
        symbol: frame(gateway.run(db, gateway.load_context_bars(symbol, timeframe, data_end, since, limit)))
        for symbol in spec.get("context_symbols", [])
    }
    return bars, context
