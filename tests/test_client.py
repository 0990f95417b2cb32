"""The Python client (queue_app/client.py) against a real `sfq api` process and real worker daemons:
submit, wait and the leaderboard as a DataFrame; refusals as the core's errors with the API's field; a
token-protected API; a sweep, its winner's equity curve, a promotion and the live record; a study."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time

import pytest

from queue_app.client import Client, ModelId, StudyId, SweepId, WaitTimeout
from queue_app.errors import Conflict, Forbidden, NotFound, Rejected, Unavailable
from tests.conftest import ROOT, free_port, wait_until
from tests.test_layers import imported

FAST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60, "cv_folds": 3}
UTC_NS = "datetime64[ns, UTC]"
TOKEN = "alice:" + secrets.token_urlsafe(24)  # as written in SFQ_API_TOKENS: the client sends the token part


def test_the_client_is_a_front_end_over_http_only():
    """It imports sfq's error tree and vocabulary, nothing of the API, the gateway or the database: a
    notebook needs httpx, pandas and tqdm."""
    own = [name for _, name in imported(ROOT / "queue_app" / "client.py") if name.startswith("queue_app")]
    assert own and all(
        name.split(".")[:2] in (["queue_app", "errors"], ["queue_app", "vocabulary"]) for name in own
    )
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, queue_app.client; print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'psycopg', 'psycopg_pool', 'procrastinate', 'starlette', 'uvicorn', 'sklearn', 'workers'}))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_submit_wait_the_leaderboard_and_refusals(clean, start_api, start_worker):
    with Client(start_api()) as sfq:
        model = sfq.submit(**FAST)
        assert isinstance(model, ModelId) and not model.deduplicated and len(model.fingerprint) == 64
        again = sfq.submit(FAST)
        assert (again, again.deduplicated, again.fingerprint) == (model, True, model.fingerprint)

        with pytest.raises(WaitTimeout) as late:  # no worker yet
            sfq.wait(model, timeout=0.3, poll=0.1, progress=False)
        assert late.value.pending == [model] and isinstance(late.value, TimeoutError)

        with pytest.raises(Rejected) as refused:
            sfq.submit(**FAST, horizon=0)
        assert (refused.value.field, refused.value.status) == ("horizon", 422)
        assert "horizon" in refused.value.message
        with pytest.raises(Rejected) as refused:
            sfq.models(sort="x;drop")
        assert refused.value.field == "sort"
        with pytest.raises(NotFound) as missing:
            sfq.model(999999)
        assert (missing.value.status, missing.value.message) == (404, "no model with id 999999")

        start_worker(1)
        assert sfq.wait([model], timeout=120, poll=0.2, progress=False) == {model: "completed"}
        with pytest.raises(Conflict):
            sfq.cancel(model)
        other = sfq.submit(**FAST, horizon=2)
        assert sfq.wait(other, timeout=120, poll=0.2, progress=False) == {other: "completed"}

        board = sfq.models(sort="ic", order="desc", symbol="AAPL")
        assert list(board.index) == sorted([model, other], key=lambda i: -sfq.model(i)["metrics"]["ic"])
        assert board.index.name == "id" and board.attrs["total"] == 2
        assert (board["status"] == "completed").all()
        for column in ("ic", "directional_accuracy", "cv_ic_mean", "rmse"):
            assert board[column].dtype == "float64", column
        for column in ("submitted_at", "finished_at", "data_end", "test_end"):
            assert str(board[column].dtype) == UTC_NS, column

        predictions = sfq.predictions(model)
        assert len(predictions) == 60 and list(predictions.columns) == ["predicted", "actual"]
        assert str(predictions.index.dtype) == UTC_NS and predictions.index.is_monotonic_increasing
        features = sfq.features(model)
        assert features.index.name == "feature" and list(features["rank"]) == list(
            range(1, len(features) + 1)
        )

        curve = sfq.equity_curve(sfq.backtest(model))
        assert curve["equity"].iloc[0] == 1.0 and str(curve.index.dtype) == UTC_NS
        assert (curve["drawdown"] >= 0).all()
        assert sfq.simulations(model).loc[sfq.backtest(model), "strategy"] == "long_short"
        forecast = sfq.predict(model)
        assert forecast["status"] == "completed" and isinstance(forecast["prediction"], float)


def test_a_sweep_its_winner_promoted_on_a_token_protected_api(
    clean, start_api, start_worker, monkeypatch, capsys
):
    monkeypatch.setenv("SFQ_API_TOKENS", TOKEN)
    url = start_api()
    start_worker(1)
    with (
        Client(url, token=TOKEN) as sfq,
        Client(url) as anonymous,
        Client(url, token="wrong") as wrong,
    ):
        sweep = sfq.sweep(FAST, {"hyperparameters.alpha": [0.1, 1.0, 10.0]})
        assert isinstance(sweep, SweepId) and (sweep.combinations, sweep.reused) == (3, 0)
        with pytest.raises(Forbidden) as unauthenticated:
            anonymous.sweep(FAST, {"horizon": [3]})
        assert unauthenticated.value.status == 401

        assert sfq.wait(sweep, timeout=120, poll=0.2) == {"completed": 3}
        assert "sweep" in capsys.readouterr().err  # tqdm's text bar, on a terminal or a file
        # A model's default backtest is queued when its training ends, and runs a moment later.
        wait_until(
            lambda: anonymous.sweep_leaderboard(sweep)["backtest.sharpe"].notna().all(), "backtests run"
        )
        board = anonymous.sweep_leaderboard(sweep)  # reads stay open
        assert list(board.index) == [1, 2, 3] and sorted(board["hyperparameters.alpha"]) == [0.1, 1.0, 10.0]
        assert board["backtest.sharpe"].is_monotonic_decreasing
        assert board.attrs["best_by_sharpe"]["trials"] == 3
        winner = int(board["model_id"].iloc[0])

        curve = sfq.equity_curve(sfq.backtest(winner))
        assert str(curve.index.dtype) == UTC_NS and curve["equity"].dtype == "float64"
        assert curve["equity"].iloc[0] == 1.0 and len(curve) >= 60

        with pytest.raises(Forbidden) as forbidden:
            wrong.promote("trend", winner, "best Sharpe of the sweep")
        assert (forbidden.value.status, forbidden.value.message) == (403, "invalid token")
        with pytest.raises(Rejected) as bad_alias:
            sfq.move_alias("trend", "PROD", winner, "x")
        assert bad_alias.value.field == "alias"
        moved = sfq.promote("trend", winner, "best Sharpe of the sweep")
        assert (moved["model_id"], moved["moved_by"], moved["via"]) == (winner, "alice", "http")
        with pytest.raises(NotFound):
            sfq.strategy("no-such-strategy")

        history = sfq.strategy_history("trend")
        assert list(history[["alias", "model_id", "moved_by"]].itertuples(index=False)) == [
            ("production", winner, "alice")
        ]
        assert str(history["moved_at"].dtype) == UTC_NS and history["previous_model_id"].isna().all()
        forecast = sfq.predict(winner)
        deadline = time.monotonic() + 30  # the live record is brought up to date just after the forecast
        while (aliases := sfq.strategy_aliases("trend")).loc["production", "live.forecasts"] < 1:
            assert time.monotonic() < deadline, aliases.T
            time.sleep(0.2)
        assert aliases.loc["production", "model_id"] == winner
        assert aliases.loc["production", "latest_forecast.id"] == forecast["id"]
        assert aliases.loc["production", "backtest.paper_trading.sharpe"] == pytest.approx(
            board["backtest.sharpe"].iloc[0]
        )
        live = sfq.live_record("trend")
        assert list(live.columns) == ["equity", "drawdown"] and live.attrs["forecasts"] == 1
        assert str(live.index.dtype) == UTC_NS  # empty until a forecast's bar is realised

        study = sfq.create_study(
            {
                "base": FAST,
                "space": {"hyperparameters.alpha": {"type": "float", "low": 0.01, "high": 10, "log": True}},
                "objective": "cv_ic",
                "sampler": "random",
                "n_trials": 3,
            }
        )
        assert isinstance(study, StudyId)
        assert sfq.wait(study, timeout=120, poll=0.2, progress=False)["state"] == "finished"
        trials = sfq.study_trials(study)
        assert len(trials) == 3 and trials.index.name == "number"
        assert trials["cv_ic"].dtype == "float64" and trials["hyperparameters.alpha"].between(0.01, 10).all()


def test_an_unreachable_api_is_unavailable():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as sfq, pytest.raises(Unavailable) as down:
        sfq.models()
    assert "cannot reach" in down.value.message
