"""The dashboard's comparison page (/ui/compare) in the same headless Chromium as tests/test_ui.py: three
Ridge models picked on the leaderboard and compared (only the spec fields that differ, one metrics column
per model with the database's numbers, the equity curves drawn), a model without a backtest noted as
missing from the chart, and each bad selection a 4xx page that names the problem and shows nothing else."""

from __future__ import annotations

import html
import time

import httpx
import pytest

from queue_app.lineage import spec_changes, spec_differences
from tests.conftest import wait_for_jobs, wait_for_models
from tests.test_ui import (
    FAST,
    By,
    _cells,
    _drawn,
    _open,
    _post,
    _read,
    _screenshots,
    _text,
    _until,
    browser,  # noqa: F401  (the fixture)
    needs_chromium,
)


def test_spec_differences_lists_each_field_that_is_not_the_same_everywhere():
    specs = [
        {"symbol": "AAPL", "horizon": 1, "hyperparameters": {"alpha": 1.0, "fit_intercept": True}},
        {"symbol": "AAPL", "horizon": 3, "hyperparameters": {"alpha": 1.0, "fit_intercept": True}},
        {
            "symbol": "AAPL",
            "horizon": 1,
            "hyperparameters": {"alpha": 10.0, "fit_intercept": True},
            "x": None,
        },
    ]
    assert spec_differences(specs) == {"horizon": [1, 3, 1], "hyperparameters.alpha": [1.0, 1.0, 10.0]}
    assert spec_differences([{"hyperparameters": None}, {"hyperparameters": {"a": 1}}]) == {
        "hyperparameters": [None, {"a": 1}]
    }
    # Two specs: what the lineage shows.
    assert spec_changes(specs[0], specs[2]) == {"hyperparameters.alpha": {"from": 1.0, "to": 10.0}}


def _flat(spec: dict) -> dict:
    """A spec's fields, hyperparameters key by key (the test's own reading, not the page's code)."""
    flat = {key: value for key, value in spec.items() if key != "hyperparameters"}
    flat.update({f"hyperparameters.{k}": v for k, v in (spec.get("hyperparameters") or {}).items()})
    return flat


@needs_chromium
@pytest.mark.timeout(600)
def test_compare_page(clean, start_api, start_worker, browser, tmp_path):  # noqa: F811
    started = time.monotonic()
    base = start_api()
    worker = start_worker(1)
    ridge = {"symbol": "AAPL", "algorithm": "Ridge", **FAST}
    with httpx.Client(base_url=base, timeout=30) as api:
        ids = [
            api.post("/train", json={**ridge, **extra}).json()["model_id"]
            for extra in ({"horizon": 1}, {"horizon": 3}, {"horizon": 1, "hyperparameters": {"alpha": 10.0}})
        ]
    done = wait_for_models(clean, ids, timeout=240)
    assert {row["status"] for row in done.values()} == {"completed"}, done
    wait_for_jobs(clean, timeout=120)  # the default backtests
    print(f"\nmodels trained in {time.monotonic() - started:.1f} s")

    # Picked on the leaderboard (ticked boxes, a GET form): the page lists them in the leaderboard's order.
    _open(browser, f"{base}/ui/models", "Models", "leaderboard")
    for model_id in ids:
        browser.find_element(By.CSS_SELECTOR, f'input[name=id][value="{model_id}"]').click()
    _post(browser, "compare-button", ("Compare models", "compare-metrics"))
    shown = sorted(ids, reverse=True)  # the leaderboard's default order: newest first
    assert browser.title.startswith(f"Compare models {', '.join(map(str, shown))}")

    # The spec fields that differ, exactly: read from the database, by the test's own comparison.
    specs = {
        model_id: _flat(spec)
        for model_id, spec in clean.execute("SELECT id, models.spec FROM models WHERE id = ANY(%s)", (ids,))
    }
    fields = sorted({k for s in specs.values() for k in s})
    differing = [k for k in fields if len({repr(s.get(k)) for s in specs.values()}) > 1]
    assert differing == ["horizon", "hyperparameters.alpha"]
    rows = _cells(browser, "differences")
    assert [row[0] for row in rows] == differing
    assert rows[0][1:] == [str(specs[i]["horizon"]) for i in shown]
    assert rows[1][1:] == [str(specs[i]["hyperparameters.alpha"]) for i in shown]
    same = _read(
        browser,
        lambda d: [
            r.get_attribute("textContent")
            for r in d.find_elements(By.CSS_SELECTOR, "#same-fields tbody tr td:first-child")
        ],
    )
    assert same == [k for k in fields if k not in differing]

    # One column per model, the database's numbers; the backtest's from its default backtest.
    headers = _read(
        browser, lambda d: [h.text for h in d.find_elements(By.CSS_SELECTOR, "#compare-metrics th")]
    )
    assert headers == ["metric", *(f"model {i}" for i in shown)]
    metrics = {row[0]: row[1:] for row in _cells(browser, "compare-metrics")}
    assert all(len(values) == len(ids) for values in metrics.values()), metrics
    assert metrics["directional_accuracy"] == [
        f"{done[i]['metrics']['directional_accuracy']:.4f}" for i in shown
    ]
    assert metrics["cv_ic_mean"] == [f"{done[i]['metrics']['cv_ic_mean']:.4f}" for i in shown]
    sharpe = dict(
        clean.execute(
            "SELECT model_id, (metrics->>'sharpe')::float8 FROM simulation_history"
            " WHERE model_id = ANY(%s) AND strategy = 'long_short' AND status = 'completed'",
            (ids,),
        ).fetchall()
    )
    assert metrics["backtest sharpe"] == [f"{sharpe[i]:.2f}" for i in shown]
    _drawn(browser, "compare-chart")
    legend = _text(browser, By.ID, "compare-chart")
    assert all(f"model {i}" in legend for i in ids), legend
    assert not browser.find_elements(By.ID, "not-charted")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    _screenshots(browser, shots, "compare")
    print(f"screenshots in {shots}")

    # Bad selections: a 4xx page naming the problem, and nothing else (no table, no chart).
    bad = {
        f"ids={ids[0]}": (400, "pick 2 to 6 different models to compare, got 1"),
        f"ids={','.join(map(str, [*ids, 900001, 900002, 900003, 900004]))}": (
            400,
            "pick 2 to 6 different models to compare, got 7",
        ),
        f"ids={ids[0]},999999": (404, "no model with id 999999"),
        f"id={ids[0]}&id=abc": (400, "not a model id: 'abc'"),
    }
    with httpx.Client(base_url=base, timeout=30) as api:
        for query, (code, problem) in bad.items():
            answer = api.get(f"/ui/compare?{query}")
            assert answer.status_code == code, (query, answer.status_code)
            assert problem in html.unescape(answer.text), (query, answer.text)
            assert "<table" not in answer.text and "<svg" not in answer.text, query
    _open(browser, f"{base}/ui/compare?ids=abc", "Compare models", "message")
    assert "not a model id: 'abc'" in _text(browser, By.ID, "message")

    # A model without a backtest yet: in the tables, noted as missing from the chart (the page reloads
    # itself while it waits).
    worker.stop()
    with httpx.Client(base_url=base, timeout=30) as api:
        queued = api.post("/train", json={**ridge, "horizon": 2}).json()["model_id"]
    _open(browser, f"{base}/ui/compare?ids={ids[0]},{queued}", "Compare models", "not-charted")
    assert f"model {queued}: no backtest yet" in _text(browser, By.ID, "not-charted")
    assert _until(
        browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare-metrics th")) == 3, "columns"
    )
    _drawn(browser, "compare-chart")
    print(f"compare test took {time.monotonic() - started:.1f} s")
