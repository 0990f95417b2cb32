"""A Python client for notebooks: sfq's HTTP API as typed calls and pandas DataFrames.

    from queue_app.client import Client
    sfq = Client("http://127.0.0.1:8000", token="secret")
    model = sfq.submit(symbol="AAPL", algorithm="Ridge")
    sfq.wait(model)
    sfq.models(sort="ic").head()

A front end like the CLI and the dashboard, but over HTTP: it imports only sfq's error tree and vocabulary
(no database driver, no server), so a notebook needs httpx, pandas and tqdm, and an API to talk to. A
refusal raises the error class the core raised behind the API (queue_app.errors: `Rejected` with the API's
`field`, `NotFound`, `Conflict`, `Forbidden`, `Unavailable`), so a notebook catches what the core raises.
Every error from an answer also carries the HTTP status (`.status`). Worked example: docs/client.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

import httpx
import pandas as pd

from queue_app.errors import (
    HTTP_STATUS,
    Forbidden,
    NotFound,
    Rejected,
    SfqError,
    TooLarge,
    Unavailable,
)
from queue_app.vocabulary import FINISHED

__all__ = [
    "Client",
    "ModelId",
    "SweepId",
    "StudyId",
    "WaitTimeout",
    "Model",
    "Forecast",
    "Simulation",
    "AliasMove",
]

DEFAULT_URL = "http://127.0.0.1:8000"  # `sfq api`'s default address
STUDY_RUNNING = "running"  # a study's state until it is stopped, finished or failed
# Columns read as instants (UTC): every timestamp the API answers with, wherever it stands.
TIMES = frozenset(
    {
        "ts",
        "as_of",
        "data_end",
        "submitted_at",
        "started_at",
        "finished_at",
        "created_at",
        "moved_at",
        "requested_at",
        "realised_at",
        "updated_at",
        "period_start",
        "period_end",
        "train_start",
        "train_end",
        "test_start",
        "test_end",
        "lockbox_start",
    }
)
NULLABLE_INTS = frozenset(
    {"worker_pid", "parent_model_id", "previous_model_id", "parent_number", "attempts", "n_trades"}
)


class WaitTimeout(SfqError, TimeoutError):
    """`Client.wait` ran out of time; `pending` lists what had not finished (model ids, or the sweep's or
    study's id). Nothing was cancelled: wait again, or cancel."""

    def __init__(self, message: str, pending: list[int]):
        super().__init__(message)
        self.pending = pending


class ModelId(int):
    """A model's id, as `submit` answers it: also says whether an existing model serves the request
    (`deduplicated`: same fingerprint, not trained again) and the spec's `fingerprint`."""

    deduplicated: bool
    fingerprint: str

    def __new__(cls, value: int, deduplicated: bool = False, fingerprint: str = "") -> ModelId:
        self = super().__new__(cls, value)
        self.deduplicated, self.fingerprint = deduplicated, fingerprint
        return self


class SweepId(int):
    """A sweep's id (`Client.sweep`): `Client.wait(sweep_id)` waits for its models."""

    combinations: int
    reused: int

    def __new__(cls, value: int, combinations: int = 0, reused: int = 0) -> SweepId:
        self = super().__new__(cls, value)
        self.combinations, self.reused = combinations, reused
        return self


class StudyId(int):
    """A study's id (`Client.create_study`): `Client.wait(study_id)` waits for it to end."""


class Model(TypedDict, total=False):
    """GET /models/{id}: the model, its spec and results (README, HTTP)."""

    id: int
    status: str
    fingerprint: str
    spec: dict[str, Any]
    symbol: str
    algorithm: str
    metrics: dict[str, Any] | None
    fold_metrics: list[dict[str, Any]] | None
    error: str | None
    feature_importances: list[dict[str, Any]]
    url: str


class Forecast(TypedDict, total=False):
    """POST /models/{id}/predict, GET /forecasts/{id}."""

    id: int
    model_id: int
    status: str  # queued, completed, failed
    as_of: str
    prediction: float | None
    reference_close: float | None
    predicted_price: float | None
    realised: float | None
    error: str | None
    url: str


class Simulation(TypedDict, total=False):
    """GET /simulations/{id}: a backtest, its metrics and its equity curve ([[ts, equity], ...])."""

    id: int
    model_id: int
    strategy: str
    params: dict[str, Any]
    status: str
    metrics: dict[str, Any] | None
    equity_curve: list[list[Any]] | None
    url: str


class AliasMove(TypedDict, total=False):
    """POST /strategies/{name}/aliases/{alias}: the move as recorded in the alias's history."""

    id: int
    strategy: str
    alias: str
    model_id: int
    previous_model_id: int | None
    moved_by: str
    via: str
    reason: str
    moved_at: str


def _flat(prefix: str, value: Any, into: dict[str, Any]) -> None:
    """Nested objects as dotted columns (`backtest.sharpe`, `buy_and_hold.cagr`); lists stay whole."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, into)
    else:
        into[prefix] = value


def flatten(row: Mapping[str, Any], *nested: str) -> dict[str, Any]:
    """`row` with each of the `nested` keys' objects spread into columns of their own: a metric keeps its
    own name (`ic`) unless a column of the row has it; other nested keys are prefixed (`backtest.sharpe`)."""
    out = {key: value for key, value in row.items() if key not in nested}
    for key in nested:
        inner: dict[str, Any] = {}
        _flat("" if key == "metrics" else key, row.get(key) or {}, inner)
        for name, value in inner.items():
            out[name if name not in out else f"{key}.{name}"] = value
    return out


def frame(
    rows: list[dict[str, Any]], index: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """A DataFrame with sfq's dtypes: instants as datetime64[ns, UTC], ids that may be missing as Int64,
    indexed by `index`; `columns` fixes the columns when there are no rows (and leads the order)."""
    df = pd.DataFrame(rows)
    for name in columns or []:
        if name not in df.columns:
            df[name] = pd.Series(dtype="object")
    if columns:
        df = df[[*columns, *(c for c in df.columns if c not in columns)]]
    for name in df.columns:
        if name.rsplit(".", 1)[-1] in TIMES:
            df[name] = pd.to_datetime(df[name], utc=True, format="ISO8601").astype("datetime64[ns, UTC]")
        elif name.rsplit(".", 1)[-1] in NULLABLE_INTS or name in ("id", "model_id", "rank", "number"):
            values = pd.to_numeric(df[name])
            df[name] = values.astype("Int64" if values.isna().any() or name in NULLABLE_INTS else "int64")
    if index is not None:
        df = df.set_index(index)
    return df


def _series_frame(points: list[list[Any]] | None, value: str) -> pd.DataFrame:
    """[[ts, x], ...] as a DataFrame indexed by ts (UTC) with one float column `value`."""
    df = pd.DataFrame(points or [], columns=["ts", value])
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601").astype("datetime64[ns, UTC]")
    df[value] = df[value].astype("float64")
    return df.set_index("ts")


def equity_frame(points: list[list[Any]] | None) -> pd.DataFrame:
    """An equity curve ([[ts, equity], ...], starting at 1.0) with its drawdown from the running peak."""
    df = _series_frame(points, "equity")
    df["drawdown"] = 1.0 - df["equity"] / df["equity"].cummax()
    return df


def error_from(response: httpx.Response) -> SfqError:
    """The API's answer `{"error": message, "detail": ...}` as the sfq error its status stands for (the
    inverse of queue_app.errors.HTTP_STATUS); `.status` is the HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        message, detail = str(body["error"]), body.get("detail")
    else:  # uvicorn's plain-text answers, a proxy's page
        message, detail = response.text.strip()[:200] or response.reason_phrase, None
    field = detail.get("field") if isinstance(detail, dict) else None
    status = response.status_code
    text = None if detail is None or isinstance(detail, dict) else str(detail)
    kind = next((kind for kind, code in HTTP_STATUS.items() if code == status), None)
    if status == 401:  # no token (the API's TokenAuth); a wrong one, or a role that may not, is 403
        kind = Forbidden
    if kind is TooLarge:
        error: SfqError = TooLarge(message, detail.get("limit") if isinstance(detail, dict) else None)
    elif kind is Rejected:
        error = Rejected(message, field)
    elif kind is not None:
        error = kind(message, text)
    else:
        error = SfqError(message, text or f"HTTP {status}")
    error.status = status  # type: ignore[attr-defined]
    return error


def _progress(total: int | None, description: str, enabled: bool) -> Any:
    """tqdm.auto's bar: a widget in Jupyter, text in a terminal; a stand-in that draws nothing when off."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="model", leave=True)


class _NoBar:
    n = 0
    total: int | None = None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class Client:
    """sfq's HTTP API. `url` defaults to $SFQ_API_URL (else sfq api's default), `token` to $SFQ_API_TOKEN:
    the token alone, or `name:token` as written in SFQ_API_TOKENS (the name stays with the server).
    `timeout`: seconds per HTTP request (waiting calls add what they wait). Use it as a context manager
    or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        url = url or os.environ.get("SFQ_API_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("SFQ_API_TOKEN")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token.rpartition(':')[2]}"
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), extra_s: float = 0, **kwargs: Any
    ) -> Any:
        if extra_s:
            timeout = self.http.timeout
            kwargs["timeout"] = httpx.Timeout(
                (timeout.read or 30) + extra_s,
                connect=timeout.connect,
                write=timeout.write,
                pool=timeout.pool,
            )
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach sfq's API at {self.url}", f"{type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code not in ok:
            raise error_from(response)
        body = response.json()
        if response.status_code >= 400 and isinstance(body, dict) and set(body) == {"error", "detail"}:
            raise error_from(response)  # a refusal where a failed forecast or backtest may also answer
        return body

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self._request("POST", path, json=body, **kwargs)

    # -- models ----------------------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any] | None = None, /, **fields: Any) -> ModelId:
        """A training request (README, The request): `submit(symbol="AAPL", algorithm="Ridge")` or
        `submit({...})`. The model's id, with `.deduplicated` (an existing model serves it) and
        `.fingerprint`. A refused field raises Rejected with `.field` naming it."""
        answer = self._post("/train", {**(spec or {}), **fields})
        return ModelId(answer["model_id"], answer["deduplicated"], answer["fingerprint"])

    def models(
        self,
        sort: str = "id",
        order: str = "desc",
        *,
        status: str | None = None,
        symbol: str | None = None,
        algorithm: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> pd.DataFrame:
        """A page of models (a leaderboard with `sort=` any stored metric), indexed by id: the model's
        columns and each held-out metric as a column of its own (`ic`, `directional_accuracy`,
        `cv_ic_mean`, ...). `.attrs["total"]`: how many models match the filters."""
        answer = self._get(
            "/models",
            sort=sort,
            order=order,
            status=status,
            symbol=symbol,
            algorithm=algorithm,
            limit=limit,
            offset=offset,
        )
        rows = [flatten(row, "metrics", "progress") for row in answer["models"]]
        df = frame(rows, index="id", columns=["id", "status", "symbol", "algorithm", "horizon"])
        df.attrs.update(total=answer["total"], limit=answer["limit"], offset=answer["offset"])
        return df

    def model(self, model_id: int) -> Model:
        """Everything about one model (status, spec, metrics, fold scores, timings, error, importances)."""
        return self._get(f"/models/{int(model_id)}")

    def predictions(self, model_id: int) -> pd.DataFrame:
        """The held-out test window, indexed by ts (UTC): `predicted` next to `actual` (float64)."""
        answer = self._get(f"/models/{int(model_id)}/predictions")
        df = frame(answer["predictions"], index="ts", columns=["ts", "predicted", "actual"])
        df = df.astype({"predicted": "float64", "actual": "float64"})
        df.attrs.update(model_id=answer["model_id"], status=answer["status"])
        return df

    def features(self, model_id: int) -> pd.DataFrame:
        """Feature importances, indexed by feature, most important first: importance, rank, method."""
        answer = self._get(f"/models/{int(model_id)}/features")
        df = frame(answer["features"], index="feature", columns=["feature", "importance", "rank", "method"])
        df = df.astype({"importance": "float64"}).sort_values("rank")
        df.attrs.update(model_id=answer["model_id"], status=answer["status"])
        return df

    def cancel(self, model_id: int) -> dict[str, Any]:
        """A queued model never runs, a running one is stopped; Conflict for a finished model."""
        return self._post(f"/models/{int(model_id)}/cancel")

    def retrain(self, model_id: int, force: bool = False) -> ModelId:
        """The model's spec on the bars there are now (`force`: a fresh run without new bars)."""
        answer = self._post(f"/retrain/{int(model_id)}", {"force": force})
        return ModelId(answer["model_id"], answer["deduplicated"], answer["fingerprint"])

    def evolve(self, parent_model_id: int, **overrides: Any) -> ModelId:
        """A child of a model: its spec with `overrides` (`horizon=5`, `hyperparameters={...}`)."""
        answer = self._post(
            "/api/train_with_parent", {"parent_model_id": int(parent_model_id), "overrides": overrides}
        )
        return ModelId(answer["model_id"], answer["deduplicated"], answer["fingerprint"])

    # -- forecasts -------------------------------------------------------------------------------------

    def predict(self, model_id: int, wait: float = 30) -> Forecast:
        """A forecast from the latest bar with the stored model, waiting up to `wait` seconds for a worker
        (then polling it until then): `status` completed, failed (`error` says why) or still queued."""
        deadline = time.monotonic() + wait
        forecast: Forecast = self._request(
            "POST",
            f"/models/{int(model_id)}/predict",
            ok=(200, 202, 422),
            params={"wait": min(int(wait), 300)},
            extra_s=min(wait, 300),
        )
        while forecast["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.2)
            forecast = self.forecast(forecast["id"])
        return forecast

    def forecast(self, forecast_id: int) -> Forecast:
        return self._get(f"/forecasts/{int(forecast_id)}")

    # -- backtests -------------------------------------------------------------------------------------

    def simulations(self, model_id: int) -> pd.DataFrame:
        """A model's backtests, indexed by id: strategy, params, status, period and every metric as a column
        (`sharpe`, `total_return`, `buy_and_hold.sharpe`, ...)."""
        answer = self._get(f"/models/{int(model_id)}/simulations")
        rows = [flatten(row, "metrics") for row in answer["simulations"]]
        df = frame(rows, index="id", columns=["id", "model_id", "strategy", "status"])
        df.attrs.update(model_id=answer["model_id"], status=answer["status"])
        return df

    def simulation(self, simulation_id: int) -> Simulation:
        return self._get(f"/simulations/{int(simulation_id)}")

    def simulate(
        self, model_id: int, strategy: str = "long_short", params: Mapping[str, Any] | None = None
    ) -> Simulation:
        """Another backtest of a completed model (`params`: threshold, sizing, scale, cap, cost_bps); waits
        up to 10 s for a worker, the answer's `status` says whether it is done."""
        body = {"model_id": int(model_id), "strategy": strategy, "params": dict(params or {})}
        answer = self._request("POST", "/simulate", ok=(200, 202, 422), json=body, extra_s=10)
        return answer

    def equity_curve(self, simulation_id: int) -> pd.DataFrame:
        """A backtest's equity curve, indexed by ts (UTC): `equity` (from 1.0) and `drawdown` (the fall
        from the running peak, as a fraction)."""
        simulation = self.simulation(simulation_id)
        df = equity_frame(simulation.get("equity_curve"))
        df.attrs.update(simulation_id=simulation["id"], model_id=simulation["model_id"])
        return df

    def backtest(self, model_id: int, wait: float = 30) -> int:
        """The id of a model's default backtest (long_short, default parameters: the one a sweep ranks by),
        for `equity_curve`. A worker runs it just after training: waits up to `wait` seconds for it to end
        (a failed one too: its `status` says so); NotFound when there is none by then."""
        deadline = time.monotonic() + wait
        while True:
            sims = self._get(f"/models/{int(model_id)}/simulations")["simulations"]
            default = sorted(
                (s for s in sims if s["strategy"] == "long_short" and not s.get("lockbox")),
                key=lambda s: s["id"],
            )
            if default and default[0]["status"] in FINISHED:
                return default[0]["id"]
            if time.monotonic() >= deadline:
                raise NotFound(
                    f"model {int(model_id)} has no finished backtest after {wait:g} s"
                    " (a completed model is backtested just after training)"
                )
            time.sleep(0.2)

    # -- sweeps and studies ----------------------------------------------------------------------------

    def sweep(
        self, base: Mapping[str, Any], grid: Mapping[str, list[Any]], priority: int | None = None
    ) -> SweepId:
        """One model per combination of `grid` (`{"horizon": [1, 5], "hyperparameters.alpha": [...]}`) on
        `base`, all enqueued at once; `.combinations` and `.reused` (live models taken as they are)."""
        body: dict[str, Any] = {"base": dict(base), "grid": dict(grid)}
        if priority is not None:
            body["priority"] = priority
        answer = self._post("/sweeps", body)
        return SweepId(answer["sweep_id"], answer["combinations"], answer["reused"])

    def sweep_status(
        self, sweep_id: int, sort: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """GET /sweeps/{id} as it is: progress, base, grid, rows, best_by_sharpe (DSR), overfitting (PBO)."""
        return self._get(f"/sweeps/{int(sweep_id)}", sort=sort, limit=limit)

    def sweep_leaderboard(
        self, sweep_id: int, sort: str = "backtest.sharpe", order: str = "desc", limit: int = 500
    ) -> pd.DataFrame:
        """A sweep's leaderboard, indexed by rank: model_id, status, the combination's values (a column
        per grid key), each held-out metric (`ic`, ...) and backtest metric (`backtest.sharpe`,
        `backtest.psr`). `.attrs`: progress, best_by_sharpe (its deflated Sharpe ratio), overfitting."""
        answer = self._get(f"/sweeps/{int(sweep_id)}", sort=sort, order=order, limit=limit)
        rows = [flatten(row, "combination", "metrics", "backtest") for row in answer["rows"]]
        for row in rows:  # the grid's keys as they were written: `hyperparameters.alpha`, `horizon`
            for key in answer["grid"]:
                if f"combination.{key}" in row:
                    row[key if key not in row else f"combination.{key}"] = row.pop(f"combination.{key}")
        df = frame(rows, index="rank", columns=["rank", "model_id", "status"])
        df.attrs.update(
            sweep_id=answer["sweep_id"],
            progress=answer["progress"],
            best_by_sharpe=answer.get("best_by_sharpe"),
            overfitting=answer.get("overfitting"),
        )
        return df

    def create_study(self, study: Mapping[str, Any]) -> StudyId:
        """A search (README, Studies): `{"base", "space", "objective", "sampler", "n_trials", ...}`."""
        return StudyId(self._post("/studies", dict(study))["study_id"])

    def study(self, study_id: int, importances: bool = True) -> dict[str, Any]:
        """GET /studies/{id}: state, progress, best, best_by_sharpe, importances, trials, ..."""
        return self._get(f"/studies/{int(study_id)}", importances=None if importances else "false")

    def study_trials(self, study_id: int) -> pd.DataFrame:
        """A study's trials, indexed by number: model_id, state, each parameter as a column (named as in
        the space), each objective's value (`cv_ic`, ...), cpu_seconds, error."""
        answer = self.study(study_id, importances=False)
        metrics = [objective["metric"] for objective in answer["objectives"]]
        rows = []
        for trial in answer["trials"]:
            row = {k: v for k, v in trial.items() if k not in ("params", "values")}
            row.update(trial.get("params") or {})
            row.update(zip(metrics, trial.get("values") or [None] * len(metrics), strict=True))
            rows.append(row)
        df = frame(rows, index="number", columns=["number", "model_id", "state", *metrics])
        df = df.astype({metric: "float64" for metric in metrics})
        df.attrs.update(study_id=answer["study_id"], state=answer["state"], objectives=metrics)
        return df

    def stop_study(self, study_id: int) -> dict[str, Any]:
        """No more trials are asked; those running finish."""
        return self._post(f"/studies/{int(study_id)}/stop")

    # -- strategies ------------------------------------------------------------------------------------

    def strategy(self, name: str) -> dict[str, Any]:
        """GET /strategies/{name}: each alias with its model, latest forecast, live record and backtest."""
        return self._get(f"/strategies/{_segment(name)}")

    def strategy_aliases(self, name: str) -> pd.DataFrame:
        """A strategy's track records side by side, indexed by alias: model_id, moved_at, the model's
        columns, the latest forecast (`latest_forecast.prediction`), the live record (`live.forecasts`,
        `live.realised`, `live.ic`, `live.paper_trading.sharpe`, ...) beside the held-out metrics and the
        default backtest (`backtest.held_out.ic`, `backtest.paper_trading.sharpe`, ...), and the decay flag
        (`decay.decayed`, `decay.live_sharpe`, `decay.backtest_sharpe`, `decay.standard_error`, `decay.n`)."""
        answer = self.strategy(name)
        rows = []
        for alias in answer["aliases"]:
            row = dict(alias)
            row.setdefault("live", {})
            row["live"] = {k: v for k, v in (row["live"] or {}).items() if k != "equity_curve"}
            rows.append(flatten(row, "model", "latest_forecast", "live", "decay", "backtest"))
        df = frame(rows, index="alias", columns=["alias", "model_id", "moved_at"])
        df.attrs.update(strategy=answer["name"])
        return df

    def live_record(self, name: str, alias: str = "production") -> pd.DataFrame:
        """The paper-trading equity curve of an alias's live forecasts, indexed by ts (UTC): `equity` and
        `drawdown`; empty until a forecast's bar has been realised and traded."""
        aliases = {a["alias"]: a for a in self.strategy(name)["aliases"]}
        if alias not in aliases:
            raise NotFound(f"strategy {name!r} has no alias {alias!r}", ", ".join(sorted(aliases)) or None)
        live = aliases[alias]["live"] or {}
        df = equity_frame(live.get("equity_curve"))
        df.attrs.update({k: v for k, v in live.items() if k != "equity_curve"})
        df.attrs.update(strategy=name, alias=alias, model_id=aliases[alias]["model_id"])
        return df

    def strategy_history(self, name: str) -> pd.DataFrame:
        """Every move of the strategy's aliases, newest first, indexed by id: alias, model_id,
        previous_model_id, moved_by (the token's name), db_role, via, reason, moved_at."""
        answer = self._get(f"/strategies/{_segment(name)}/history")
        columns = ["id", "alias", "model_id", "previous_model_id", "moved_by", "via", "reason", "moved_at"]
        return frame(answer["history"], index="id", columns=columns)

    def move_alias(self, name: str, alias: str, model_id: int, reason: str) -> AliasMove:
        """Point a strategy's alias at a completed model (creating the strategy), recorded with the token's
        name, the time and `reason`. Rejected names the bad field; Conflict for a model not completed."""
        body = {"model_id": int(model_id), "reason": reason}
        return self._post(f"/strategies/{_segment(name)}/aliases/{_segment(alias)}", body)

    def promote(self, name: str, model_id: int, reason: str) -> AliasMove:
        """Move the strategy's `production` alias."""
        return self.move_alias(name, "production", model_id, reason)

    def set_retrain_policy(
        self,
        name: str,
        alias: str,
        policy: Mapping[str, Any],
        tolerance: float | None = None,
        objective: str | None = None,
    ) -> dict[str, Any]:
        """How the alias's model is retrained (README: retrain policies), e.g. `{"kind": "every_n_bars",
        "n": 5}`, and judged: it moves only if `objective` (default cv_ic) is not worse than the
        champion's by more than `tolerance` (default 0). Rejected names the bad field (`policy.n`, ...)."""
        body = {"policy": dict(policy), "tolerance": tolerance, "objective": objective}
        path = f"/strategies/{_segment(name)}/aliases/{_segment(alias)}/retrain-policy"
        return self._request("PUT", path, json={k: v for k, v in body.items() if v is not None})

    def strategy_retrains(self, name: str) -> pd.DataFrame:
        """Every retrain of the strategy's aliases, newest first, indexed by id: alias, cause, model_id
        (the retrained model), champion_model_id, objective, direction, champion_value, challenger_value,
        tolerance, verdict (promoted, candidate, failed, unchanged; none while it trains) and reason."""
        answer = self._get(f"/strategies/{_segment(name)}/history")
        columns = ["id", "alias", "cause", "model_id", "champion_model_id", "objective", "verdict"]
        return frame(answer["retrains"], index="id", columns=columns)

    # -- waiting ---------------------------------------------------------------------------------------

    def wait(
        self,
        what: int | Iterable[int] | None = None,
        *,
        sweep: int | None = None,
        study: int | None = None,
        timeout: float = 600,
        poll: float = 1.0,
        progress: bool = True,
    ) -> dict[int, str] | dict[str, Any]:
        """Block until models, a sweep's models or a study have finished, with a progress bar (tqdm.auto:
        a widget in Jupyter, text in a terminal; `progress=False`: none). `what`: a model id or ids (then
        {id: status}), a SweepId (its progress {status: count}) or a StudyId (GET /studies/{id}); plain
        ids of a sweep or a study go by `sweep=` or `study=`. Past `timeout` seconds: WaitTimeout."""
        if isinstance(what, SweepId):
            sweep, what = what, None
        elif isinstance(what, StudyId):
            study, what = what, None
        if sum(x is not None for x in (what, sweep, study)) != 1:
            raise Rejected("wait for one thing: model ids, a sweep or a study", "what")
        deadline = time.monotonic() + timeout
        if sweep is not None:
            return self._wait_sweep(int(sweep), deadline, timeout, poll, progress)
        if study is not None:
            return self._wait_study(int(study), deadline, timeout, poll, progress)
        ids = [int(what)] if isinstance(what, int) else [int(i) for i in what]  # type: ignore[union-attr]
        return self._wait_models(ids, deadline, timeout, poll, progress)

    def _wait_models(
        self, ids: list[int], deadline: float, timeout: float, poll: float, progress: bool
    ) -> dict[int, str]:
        statuses: dict[int, str] = {}
        bar = _progress(len(ids), f"{len(ids)} model(s)", progress)
        try:
            while True:
                for model_id in ids:
                    if statuses.get(model_id) not in FINISHED:
                        statuses[model_id] = self._get(f"/models/{model_id}")["status"]
                done = sum(status in FINISHED for status in statuses.values())
                bar.update(done - bar.n)
                bar.set_postfix_str(_counts(statuses.values()))
                if done == len(ids):
                    return statuses
                pending = [i for i in ids if statuses[i] not in FINISHED]
                _check(deadline, timeout, f"model(s) {_ids(pending)} not finished", pending)
                time.sleep(poll)
        finally:
            bar.close()

    def _wait_sweep(
        self, sweep_id: int, deadline: float, timeout: float, poll: float, progress: bool
    ) -> dict[str, Any]:
        answer = self.sweep_status(sweep_id, limit=1)
        bar = _progress(answer["combinations"], f"sweep {sweep_id}", progress)
        try:
            while True:
                counts: dict[str, int] = answer["progress"]
                done = sum(n for status, n in counts.items() if status in FINISHED)
                bar.update(done - bar.n)
                bar.set_postfix_str(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
                if done >= answer["combinations"]:
                    return counts
                _check(
                    deadline,
                    timeout,
                    f"sweep {sweep_id}: {done} of {answer['combinations']} finished",
                    [sweep_id],
                )
                time.sleep(poll)
                answer = self.sweep_status(sweep_id, limit=1)
        finally:
            bar.close()

    def _wait_study(
        self, study_id: int, deadline: float, timeout: float, poll: float, progress: bool
    ) -> dict[str, Any]:
        answer = self.study(study_id, importances=False)
        bar = _progress(answer["budget"]["n_trials"], f"study {study_id}", progress)
        try:
            while True:
                done = sum(answer["progress"][state] for state in ("complete", "pruned", "failed", "reused"))
                bar.update(done - bar.n)
                bar.set_postfix_str(f"{answer['progress']['running']} running, state {answer['state']}")
                if answer["state"] != STUDY_RUNNING:
                    return self.study(study_id)
                _check(deadline, timeout, f"study {study_id} still running after {done} trial(s)", [study_id])
                time.sleep(poll)
                answer = self.study(study_id, importances=False)
        finally:
            bar.close()


def _segment(name: str) -> str:
    """A name as one path segment (the API checks what it may be)."""
    from urllib.parse import quote

    return quote(str(name), safe="")


def _counts(statuses: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def _check(deadline: float, timeout: float, what: str, pending: list[int]) -> None:
    if time.monotonic() >= deadline:
        raise WaitTimeout(f"{what} after {timeout:g} s (nothing cancelled: wait again or cancel)", pending)
