"""The dashboard's strategy pages (/ui/strategies, /ui/strategies/{name}) in the same headless Chromium as
tests/test_ui.py, against a real API and a real worker: a model trained, promoted, and fourteen new bars
forecast, realised and paper-traded by the worker; the list shows each alias's live and backtest Sharpe
with the decay flag the worker stored, the strategy's page its record beside the backtest's, the live
equity chart and the alias history (escaped); an unknown strategy is a 404 page."""

from __future__ import annotations

import html
import time

import httpx
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import wait_for_jobs, wait_for_models
from tests.test_strategies import copy_bars, insert_bar, wait_for_record
from tests.test_ui import (
    By,
    _cells,
    _drawn,
    _open,
    _screenshots,
    _text,
    browser,  # noqa: F401  (the fixture)
    needs_chromium,
)

pytestmark = needs_chromium

REASON = "first <b>live</b> model & its test"  # shown as text, never as markup


def _flag(decayed: bool) -> str:
    return "decayed" if decayed else "holding"


def _href(driver, text: str) -> str:
    """Where the page's link with this text goes (opened with _open, which waits for the page)."""
    return driver.find_element(By.LINK_TEXT, text).get_attribute("href")


@pytest.mark.timeout(600)
def test_strategy_pages(clean, start_api, start_worker, browser, tmp_path):  # noqa: F811
    started = time.monotonic()
    symbol = "UISTRAT"
    news = copy_bars(clean, symbol, keep_last=14)
    base = start_api()
    start_worker(1)
    spec = {"symbol": symbol, "algorithm": "Ridge", "train_window": 300, "test_window": 250}
    with httpx.Client(base_url=base, timeout=30) as api:
        model, other = (
            api.post("/train", json={**spec, "horizon": horizon}).json()["model_id"] for horizon in (1, 2)
        )
    done = wait_for_models(clean, [model, other], timeout=240)
    assert {row["status"] for row in done.values()} == {"completed"}, done
    wait_for_jobs(clean, timeout=120)  # the default backtests
    clean.execute("SELECT sfq_move_alias('ui-1', 'production', %s, %s)", (model, REASON))
    with clean.transaction():
        for row in news:
            insert_bar(clean, symbol, row)
    _, realised, metrics = wait_for_record(clean, model, 14, timeout=180)
    verdict, paper = metrics["decay"], metrics["paper_trading"]
    assert realised == 12 and verdict["n"] == 12 and verdict["decayed"] in (True, False), verdict
    backtest = clean.execute(
        "SELECT metrics, equity_curve FROM simulation_history WHERE model_id = %s AND status = 'completed'",
        (model,),
    ).fetchone()[0]
    # A second strategy whose live record says the opposite, as a worker stores one (the page shows both
    # states of the flag whatever the real data's verdict is).
    clean.execute("SELECT sfq_move_alias('ui-2', 'candidate', %s, 'the other flag')", (other,))
    opposite = {**verdict, "decayed": not verdict["decayed"], "live_sharpe": -1.25}
    clean.execute(
        "INSERT INTO model_live_records (model_id, forecasts, realised, metrics) VALUES (%s, 12, 12, %s)",
        (other, Jsonb({"decay": opposite})),
    )
    print(f"\nmodel trained and 14 bars forecast in {time.monotonic() - started:.1f} s")

    # From the navigation bar to the list: one row per alias, the worker's figures, the flag.
    _open(browser, f"{base}/ui", "Overview", "workers")
    _open(browser, _href(browser, "Strategies"), "Strategies", "strategies")
    rows = {(row[0], row[1]): row for row in _cells(browser, "strategies")}
    assert set(rows) == {("ui-1", "production"), ("ui-2", "candidate")}
    first = rows["ui-1", "production"]
    assert first[2:7] == [
        _flag(verdict["decayed"]),
        f"{verdict['live_sharpe']:.2f}",
        f"{backtest['sharpe']:.2f}",
        f"{verdict['standard_error']:.2f}",
        "12",
    ]
    assert first[7:9] == [f"model {model}", "12 / 14"]
    assert first[9] == f"{metrics['directional_accuracy']:.4f}" and first[10] == f"{metrics['ic']:.4f}"
    assert rows["ui-2", "candidate"][2:4] == [_flag(not verdict["decayed"]), "-1.25"]
    highlighted = browser.find_elements(By.CSS_SELECTOR, "#strategies .flag-decayed")
    assert [h.text for h in highlighted] == ["decayed"]
    assert "1 decayed" in _text(browser, By.ID, "decayed-count")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    _screenshots(browser, shots, "strategies")

    # One strategy: the record beside the backtest's, the chart, the history.
    _open(browser, _href(browser, "ui-1"), "Strategy ui-1", "alias-production")
    record = {row[0]: row[1:] for row in _cells(browser, "record-production")}
    assert record["sharpe"] == [f"{paper['sharpe']:.2f}", f"{backtest['sharpe']:.2f}"]
    assert record["ic"] == [f"{metrics['ic']:.4f}", f"{done[model]['metrics']['ic']:.4f}"]
    assert record["bars"][0] == "12"
    assert record["sharpe's standard error (live)"][0] == f"{verdict['standard_error']:.2f}"
    assert _text(browser, By.ID, "decay-production") == f"decay: {_flag(verdict['decayed'])}"
    why = _text(browser, By.ID, "alias-production")
    assert f"live Sharpe {verdict['live_sharpe']:.2f} {'<' if verdict['decayed'] else '≥'} backtest" in why
    assert f"model {model}" in _text(browser, By.ID, "alias-production")
    assert news[-1][0].strftime("%Y-%m-%d") in _text(browser, By.ID, "latest-production")
    _drawn(browser, "equity-production")
    legend = _text(browser, By.ID, "equity-production")
    assert "live paper trading" in legend and "backtest (test window)" in legend
    (move,) = _cells(browser, "history")
    assert move[1:3] == ["production", f"model {model}"] and move[6] == REASON
    assert not browser.find_elements(By.CSS_SELECTOR, "#history b")  # the reason's tags stayed text
    _screenshots(browser, shots, "strategy")
    print(f"screenshots in {shots}")

    # An unknown strategy, or a name no strategy can have: a 404 page saying so.
    with httpx.Client(base_url=base, timeout=30) as api:
        for name in ("no-such", "Bad%20Name", "a%00b"):
            answer = api.get(f"/ui/strategies/{name}")
            assert answer.status_code == 404, name
            assert "no strategy named" in html.unescape(answer.text) and "<table" not in answer.text
    _open(browser, f"{base}/ui/strategies/no-such", "Not found", "message")
    print(f"strategy pages test took {time.monotonic() - started:.1f} s")
