"""Loading a spec's bars: its symbol's and its context symbols', up to a pinned end, in one place for
training and for live forecasts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
import psycopg

from queue_app.db import QUERIES
from workers.modelling.training import bars_needed

COLUMNS = ["ts", "open", "high", "low", "close", "volume"]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS).set_index("ts")


def load_bars(
    db: psycopg.Connection, spec: dict[str, Any], data_end: datetime | str | None
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The latest `bars_needed(spec)` bars up to `data_end` of the symbol; of each context symbol, the
    bars over the same period plus as many before it for warm-up (by time, not by count: a context
    symbol that trades on other days still covers the whole period)."""
    limit = bars_needed(spec)
    params = {"timeframe": spec["timeframe"], "data_end": data_end, "limit": limit}
    bars = _frame(db.execute(QUERIES["load_bars"], {**params, "symbol": spec["symbol"]}).fetchall())
    since = bars.index[0] if len(bars) else data_end
    context = {
        symbol: _frame(
            db.execute(QUERIES["load_context_bars"], {**params, "symbol": symbol, "since": since}).fetchall()
        )
        for symbol in spec.get("context_symbols", [])
    }
    return bars, context
