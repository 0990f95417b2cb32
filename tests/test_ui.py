"""The dashboard (/ui) in a real headless Chromium (Debian's chromium and chromium-driver, driven by
selenium), against a real API and real workers: every page loads, its charts are drawn, the numbers are
the database's, the forms submit, validate and cancel, and each page is photographed at a laptop's and
a phone's size (the folder is printed; the model page's laptop shot is copied to docs/screenshots)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from queue_app.ui.html import REFRESH_S
from tests.conftest import ROOT, wait_for_jobs, wait_for_models

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver"
)

FAST = {"train_window": 300, "test_window": 60, "cv_folds": 3}
SIZES = {"laptop": (1280, 800), "phone": (390, 844)}


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _screenshots(driver, folder: Path, name: str) -> None:
    """The current page at each size (a phone: a mobile viewport, so the viewport meta tag applies)."""
    for size, (width, height) in SIZES.items():
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": size == "phone"},
        )
        driver.refresh()
        driver.save_screenshot(str(folder / f"{name}-{size}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _drawn(driver, chart_id: str) -> None:
    """The chart is an inline <svg> with drawn paths and a real size on the page."""
    svg = driver.find_element(By.CSS_SELECTOR, f"#{chart_id} svg")
    assert svg.size["width"] > 200 and svg.size["height"] > 100, svg.size
    paths = svg.find_elements(By.TAG_NAME, "path")
    assert len(paths) > 5 and any(len(p.get_attribute("d") or "") > 50 for p in paths)


def _settled(driver, check, tries: int = 3) -> None:
    """Run `check` on the current page, again if a self-refreshing page reloaded under it."""
    for attempt in range(tries):
        try:
            return check()
        except StaleElementReferenceException:
            if attempt == tries - 1:
                raise
            time.sleep(0.5)


def _post(driver, button_id: str) -> None:
    """Click a form's button and wait until the browser has left the page (the answer has loaded)."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, 15).until(expected_conditions.staleness_of(old))


def _cells(driver, table_id: str) -> list[list[str]]:
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    ]


def test_dashboard(clean, start_api, start_worker, browser, tmp_path):
    started = time.monotonic()
    base = start_api()
    workers = [start_worker(1), start_worker(2)]
    with httpx.Client(base_url=base, timeout=30) as api:
        ridge = api.post("/train", json={"symbol": "AAPL", "algorithm": "Ridge", **FAST}).json()["model_id"]
        forest = api.post(
            "/train",
            json={
                "symbol": "MSFT",
                "algorithm": "RandomForest",
                "hyperparameters": {"n_estimators": 20},
                **FAST,
            },
        ).json()["model_id"]
        child = api.post(
            "/api/train_with_parent",
            json={"parent_model_id": ridge, "overrides": {"hyperparameters": {"alpha": 10.0}}},
        ).json()["model_id"]
        sweep = api.post(
            "/sweeps",
            json={
                "base": {"symbol": "AAPL", "algorithm": "Ridge", **FAST},
                "grid": {"hyperparameters.alpha": [0.1, 100.0], "horizon": [1, 2]},
            },
        ).json()
    sweep_ids = [
        r[0]
        for r in clean.execute("SELECT model_id FROM sweep_models WHERE sweep_id = %s", (sweep["sweep_id"],))
    ]
    done = wait_for_models(clean, [ridge, forest, child, *sweep_ids], timeout=60)
    assert {row["status"] for row in done.values()} == {"completed"}, done
    wait_for_jobs(clean)  # the backtests
    trained = time.monotonic() - started
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots in {shots} (models trained in {trained:.1f} s)")

    # Overview (it refreshes itself, so an element may go stale: read it again then).
    browser.get(f"{base}/ui")
    assert browser.find_element(By.CSS_SELECTOR, "script[data-refresh]")

    def overview() -> None:
        assert [row[2] for row in _cells(browser, "workers")] == ["1", "2"]
        assert ["training", "succeeded", str(len(done))] in _cells(browser, "queues")
        _drawn(browser, "throughput")

    _settled(browser, overview)
    _screenshots(browser, shots, "overview")
    for worker in workers:  # from here on, a submitted model stays queued (to be cancelled)
        worker.stop()

    # Models: the leaderboard by directional accuracy is the database's order, shown as stored (4 places).
    browser.get(f"{base}/ui/models?sort=directional_accuracy&order=desc")
    expected = clean.execute(
        "SELECT id, (metrics->>'directional_accuracy')::float8 FROM models"
        " ORDER BY (metrics->>'directional_accuracy')::float8 DESC NULLS LAST, id DESC"
    ).fetchall()
    shown = _cells(browser, "leaderboard")
    assert [int(row[0]) for row in shown] == [model_id for model_id, _ in expected]
    assert [row[6] for row in shown] == [f"{accuracy:.4f}" for _, accuracy in expected]
    _screenshots(browser, shots, "models")
    browser.get(f"{base}/ui/models?symbol=msft")
    assert [int(row[0]) for row in _cells(browser, "leaderboard")] == [forest]

    # A model: metrics, folds, importances, predictions, backtest against buy and hold, lineage.
    browser.get(f"{base}/ui/models/{ridge}")
    metrics = dict(clean.execute("SELECT metrics FROM models WHERE id = %s", (ridge,)).fetchone()[0])
    shown = {row[0]: row[1] for row in _cells(browser, "metrics")}
    assert shown["directional_accuracy"] == f"{metrics['directional_accuracy']:.4f}"
    assert shown["rmse"] == f"{metrics['rmse']:.4f}"
    assert len(_cells(browser, "folds")) == FAST["cv_folds"]
    for chart in ("importance-chart", "predictions-chart", "equity-chart"):
        _drawn(browser, chart)
    assert "buy and hold" in browser.find_element(By.ID, "equity-chart").text
    assert [row[1].split()[1] for row in _cells(browser, "lineage")] == [str(ridge), str(child)]
    _screenshots(browser, shots, "model")
    if os.environ.get("SFQ_UPDATE_SCREENSHOTS"):  # the README's picture, refreshed on request only
        (ROOT / "docs" / "screenshots").mkdir(exist_ok=True)
        shutil.copy(shots / "model-laptop.png", ROOT / "docs" / "screenshots" / "model-page.png")

    # The child's lineage names what changed.
    browser.get(f"{base}/ui/models/{child}")
    assert "hyperparameters.alpha: 1.0 → 10.0" in browser.find_element(By.ID, "lineage").text

    # The sweep: progress, leaderboard with PSR, the deflated Sharpe ratio, the metric by parameter.
    browser.get(f"{base}/ui/sweeps/{sweep['sweep_id']}")
    assert "completed 4" in browser.find_element(By.ID, "progress").text
    assert len(_cells(browser, "sweep-leaderboard")) == 4
    assert "deflated Sharpe ratio" in browser.find_element(By.ID, "dsr").text
    _drawn(browser, "sweep-chart")
    _screenshots(browser, shots, "sweep")

    # Submit: an invalid request shows the API's message and creates nothing; a valid one a model.
    count = clean.execute("SELECT count(*) FROM models").fetchone()[0]
    browser.get(f"{base}/ui/submit")
    _screenshots(browser, shots, "submit")
    browser.find_element(By.NAME, "symbol").send_keys("IBM")
    browser.find_element(By.NAME, "algorithm").send_keys("Ridge")
    browser.find_element(By.NAME, "horizon").send_keys("0")
    _post(browser, "submit-button")
    assert "horizon: must be between 1 and 1000" in browser.find_element(By.ID, "message").text
    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == count
    _screenshots(browser, shots, "submit-refused")
    horizon = browser.find_element(By.NAME, "horizon")
    horizon.clear()
    horizon.send_keys("3")
    _post(browser, "submit-button")
    assert "/ui/models/" in browser.current_url, browser.find_element(By.TAG_NAME, "main").text
    queued = int(browser.current_url.rsplit("/", 1)[1])
    assert clean.execute(
        "SELECT symbol, horizon, status::text FROM models WHERE id = %s", (queued,)
    ).fetchone() == (
        "IBM",
        3,
        "queued",
    )

    # Its page reloads itself while the model is queued, but not under a half-typed evolve form.
    browser.execute_script("window.sfqMarker = 1")
    WebDriverWait(browser, 15).until(lambda driver: driver.execute_script("return window.sfqMarker") is None)
    browser.find_element(By.CSS_SELECTOR, "form#evolve input[name=horizon]").send_keys("7")
    browser.execute_script("window.sfqMarker = 1")
    time.sleep(REFRESH_S + 2)
    assert browser.execute_script("return window.sfqMarker") == 1
    assert browser.find_element(By.CSS_SELECTOR, "form#evolve input[name=horizon]").get_attribute("value")

    # Cancel it with its button: the page comes back showing it cancelled.
    _post(browser, "cancel")
    assert browser.current_url.endswith(f"/ui/models/{queued}")
    assert "cancelled" in browser.find_element(By.ID, "status").text
    assert (
        clean.execute("SELECT status::text FROM models WHERE id = %s", (queued,)).fetchone()[0] == "cancelled"
    )
    print(f"dashboard test took {time.monotonic() - started:.1f} s")
