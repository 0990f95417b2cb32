"""Parameters of the read views, parsed once for every front end: the models leaderboard (GET /models,
/ui/models, `sfq models`) and a sweep's leaderboard (GET /sweeps/{id}, /ui/sweeps/{id}, `sfq sweep-show`).
A bad value raises Rejected naming its parameter; the dashboard shows the message and drops the value."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from queue_app.errors import Rejected
from queue_app.vocabulary import STATUSES

MAX_PAGE = 500
METRIC = re.compile(r"[a-z0-9_]{1,64}")
BACKTEST_METRIC = re.compile(r"(backtest\.)?[a-z0-9_]{1,64}")
SWEEP_SORT = "backtest.sharpe"  # a sweep's default leaderboard order

T = TypeVar("T")


def integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", raw) or not low <= int(raw) <= high:
        raise Rejected(f"{name} must be an integer between {low} and {high}, got {raw!r}", name)
    return int(raw)


FLAGS = {"true": True, "1": True, "false": False, "0": False}


def flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() not in FLAGS:
        raise Rejected(f"{name} must be true or false, got {raw[:20]!r}", name)
    return FLAGS[raw.lower()]


def text(params: Mapping[str, str], name: str) -> str | None:
    raw = params.get(name)
    if raw is not None and (len(raw) > 200 or not raw.isprintable()):
        raise Rejected(f"{name} must be printable text of at most 200 characters", name)
    return raw


def order(params: Mapping[str, str]) -> str:
    value = params.get("order", "desc")
    if value not in ("asc", "desc"):
        raise Rejected(f"order must be asc or desc, got {value!r}", "order")
    return value


@dataclass(frozen=True)
class ModelQuery:
    """A page of models: filters, the sort (id, or any numeric metric stored with the model), its order."""

    status: str | None = None
    symbol: str | None = None
    algorithm: str | None = None
    sort: str = "id"
    order: str = "desc"
    limit: int = 50
    offset: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, str], limit: int = 50) -> ModelQuery:
        status = params.get("status")
        if status is not None and status not in STATUSES:
            raise Rejected(f"status must be one of {', '.join(STATUSES)}, got {status!r}", "status")
        sort = params.get("sort", "id")
        if not METRIC.fullmatch(sort):
            raise Rejected(f"sort must be 'id' or a metric name, got {sort!r}", "sort")
        return cls(
            status=status,
            symbol=text(params, "symbol"),
            algorithm=text(params, "algorithm"),
            sort=sort,
            order=order(params),
            limit=integer(params, "limit", limit, 1, MAX_PAGE),
            offset=integer(params, "offset", 0, 0, 10**9),
        )

    def sql_params(self) -> dict[str, Any]:
        """The named queries' parameters (list_models, count_models)."""
        return {
            "status": self.status,
            "symbol": self.symbol,
            "algorithm": self.algorithm,
            "metric": None if self.sort == "id" else self.sort,
            "direction": 1 if self.order == "asc" else -1,
            "limit": self.limit,
            "offset": self.offset,
        }


@dataclass(frozen=True)
class SweepQuery:
    """A sweep's leaderboard: sort by a held-out metric (`ic`) or a backtest one (`backtest.sharpe`)."""

    sort: str = SWEEP_SORT
    order: str = "desc"
    limit: int = 20

    @classmethod
    def parse(cls, params: Mapping[str, str], limit: int = 20) -> SweepQuery:
        sort = params.get("sort", SWEEP_SORT)
        if not BACKTEST_METRIC.fullmatch(sort):
            raise Rejected(f"sort must be a metric name or backtest.<metric>, got {sort!r}", "sort")
        return cls(sort=sort, order=order(params), limit=integer(params, "limit", limit, 1, MAX_PAGE))


def lenient(parse: Callable[[dict[str, str]], T], params: Mapping[str, str]) -> tuple[T, list[str]]:
    """For a page a person browses: each bad parameter dropped (its default used) with the message kept."""
    given, notes = dict(params), []
    while True:
        try:
            return parse(given), notes
        except Rejected as rejected:
            if rejected.field not in given:
                raise
            notes.append(rejected.message)
            del given[rejected.field]
