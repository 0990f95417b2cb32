"""Parameters of the read views, parsed once for every front end: the models leaderboard (GET /models,
/ui/models, `sfq models`) and a sweep's leaderboard (GET /sweeps/{id}, /ui/sweeps/{id}, `sfq sweep-show`).
A bad value raises Rejected naming its parameter; the dashboard shows the message and drops the value."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from queue_app.errors import Rejected
from queue_app.vocabulary import SORTABLE_METRICS, STATUSES

MAX_PAGE = 500
CURSOR = re.compile(r"(?:(none|[-+0-9.eE]{1,40}):)?([0-9]{1,18})")  # [value or none:]id
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
class After:
    """The row a keyset page starts after: its place in the order (`value` None: a model without the sort's
    metric, listed after those with it, or any model in the id order) and its id."""

    value: float | None
    id: int


@dataclass(frozen=True)
class ModelQuery:
    """A page of models: filters, the sort (id, or a stored metric: SORTABLE_METRICS), its order, and where
    the page starts (`offset` rows in, after the row `after` names: the `next` of the page before)."""

    status: str | None = None
    symbol: str | None = None
    algorithm: str | None = None
    sort: str = "id"
    order: str = "desc"
    limit: int = 50
    offset: int = 0
    after: After | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str], limit: int = 50) -> ModelQuery:
        status = params.get("status")
        if status is not None and status not in STATUSES:
            raise Rejected(f"status must be one of {', '.join(STATUSES)}, got {status!r}", "status")
        sort = params.get("sort", "id")
        if sort != "id" and sort not in SORTABLE_METRICS:
            raise Rejected(
                f"sort must be 'id' or a stored metric ({', '.join(SORTABLE_METRICS)}), got {sort[:100]!r}",
                "sort",
            )
        return cls(
            status=status,
            symbol=text(params, "symbol"),
            algorithm=text(params, "algorithm"),
            sort=sort,
            order=order(params),
            limit=integer(params, "limit", limit, 1, MAX_PAGE),
            offset=integer(params, "offset", 0, 0, 10**9),
            after=_after(params, sort),
        )

    def within(self, total: int) -> None:
        """An offset past the last of `total` matching models is refused rather than answered empty."""
        if self.after is None and self.offset and self.offset >= total:
            raise Rejected(f"offset {self.offset} is past the end: {total} models match", "offset")

    def page(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """list_models' rows without their place in the order, and the cursor of the next page (None on the
        last one)."""
        places = []
        for row in rows:
            part, value = row.pop("part"), row.pop("sort_value")
            places.append(After(value if part == 0 else None, row["id"]))
        return rows, (self.after_token(places[-1]) if places and len(rows) == self.limit else None)

    def after_token(self, place: After) -> str:
        """The `after` that names a row: its id in the id order, else its metric's value (or none) and id."""
        if self.sort == "id":
            return str(place.id)
        return f"{'none' if place.value is None else repr(place.value)}:{place.id}"

    def sql_params(self) -> dict[str, Any]:
        """The named queries' parameters (list_models, count_models)."""
        return {
            "status": self.status,
            "symbol": self.symbol,
            "algorithm": self.algorithm,
            "limit": self.limit,
            "offset": self.offset,
            "after_part": None if self.after is None else int(self.after.value is None),
            "after_value": None if self.after is None else self.after.value,
            "after_id": None if self.after is None else self.after.id,
        }


def _after(params: Mapping[str, str], sort: str) -> After | None:
    raw = params.get("after")
    if raw is None:
        return None
    found = CURSOR.fullmatch(raw)
    value = found and found.group(1)
    if not found or (value is None) != (sort == "id"):
        form = "a model id" if sort == "id" else "<value>:<id> or none:<id>"
        raise Rejected(f"after must be a page's `next` in this order ({form}), got {raw[:60]!r}", "after")
    if value in (None, "none"):
        return After(None, int(found.group(2)))
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise Rejected(f"after's value must be a finite number, got {value!r}", "after")
    return After(number, int(found.group(2)))


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
