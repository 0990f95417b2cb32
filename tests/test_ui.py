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
from queue_app.ui.leaderboard import PAGE_SIZE
from tests.conftest import ROOT, wait_for_jobs, wait_for_models

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver"
)
pytestmark = needs_chromium

FAST = {"train_window": 300, "test_window": 60, "cv_folds": 3}
SIZES = {"laptop": (1280, 800), "phone": (390, 844)}
# Every wait is on what a page shows, with room for a loaded machine (both cores busy, a page taking
# seconds); an idle one answers in well under a second.
WAIT_S = 90
# What Chromium answers about a node or a script of a document that is being replaced (a form's
# answer loading, a self-refreshing page reloading): the lookup is tried again on the new document.
MID_NAVIGATION = (
    "does not belong to the document",
    "Could not find node with given id",
    "No node with given id found",
    "no such execution context",
    "Cannot find context with specified id",
    "Execution context was destroyed",
    "target frame detached",
)
# An id for the document in the window (null while it loads): a new document has a new one.
DOCUMENT = (
    "if (document.readyState !== 'complete') return null;"
    " window.sfqDocument = window.sfqDocument || String(Math.random()); return window.sfqDocument;"
)
EVOLVE_HORIZON = "form#evolve input[name=horizon]"
# Each <path>'s drawing length (its `d`), in one call rather than one per path.
PATH_LENGTHS = (
    "return Array.from(arguments[0].querySelectorAll('path'), p => (p.getAttribute('d') || '').length)"
)


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


def _mid_navigation(error: WebDriverException) -> bool:
    """The lookup hit a page mid-navigation (its node gone with the old document, or not parsed yet)."""
    if isinstance(error, StaleElementReferenceException | NoSuchElementException):
        return True
    return any(fragment in (error.msg or "") for fragment in MID_NAVIGATION)


def _where(driver) -> str:
    try:
        return f"at {driver.current_url} ({driver.title!r})"
    except WebDriverException as error:
        return f"browser busy: {error.msg}"


def _until(driver, check, what: str, timeout: float = WAIT_S):
    """Poll `check(driver)` until it returns something truthy, and return that. A lookup that hits a
    page mid-navigation counts as "not yet" (inside the predicate); any other error is raised at once."""
    deadline = time.monotonic() + timeout
    last: WebDriverException | None = None
    while True:
        try:
            if result := check(driver):
                return result
        except WebDriverException as error:
            if not _mid_navigation(error):
                raise
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not shown within {timeout} s, {_where(driver)}"
                + (f"; last lookup: {type(last).__name__}: {last.msg}" if last else "")
            )
        time.sleep(0.1)


def _read(driver, read, what: str = "the page"):
    """`read(driver)` on one loaded document, from its start to its end: read again when the page was
    still loading or was replaced under it (a self-refreshing page reloads every REFRESH_S)."""

    def once(d):
        document = d.execute_script(DOCUMENT)
        if document is None:
            return None
        value = read(d)
        return (value,) if d.execute_script(DOCUMENT) == document else None

    return _until(driver, once, what)[0]


def _shows(title: str, element_id: str):
    """A loaded page whose title starts with `title` and that has an element `element_id`."""

    def shows(driver) -> bool:
        return (
            driver.execute_script("return document.readyState") == "complete"
            and driver.title.startswith(title)
            and bool(driver.find_elements(By.ID, element_id))
        )

    return shows


def _open(driver, url: str, title: str, element_id: str) -> None:
    """Go to `url` and wait until the page shows its title and the element `element_id`."""
    driver.get(url)
    _until(driver, _shows(title, element_id), f"{url}: a page titled {title!r} with #{element_id}")


def _post(driver, button_id: str, *answers: tuple[str, str]) -> None:
    """Click a form's button and wait for the answer: a new document (the old one's marker is gone)
    showing one of `answers`, each a (title, element id) as in _shows."""
    driver.execute_script("window.sfqPosted = true")
    button = driver.find_element(By.ID, button_id)  # on a page that is not reloading itself
    try:
        button.click()
    except WebDriverException as error:  # the answer replaced the page while the click was reported
        if not _mid_navigation(error):
            raise
    pages = [_shows(title, element_id) for title, element_id in answers]
    _until(
        driver,
        lambda d: d.execute_script("return window.sfqPosted === undefined") and any(p(d) for p in pages),
        f"the answer to #{button_id}: one of {answers}",
    )


def _screenshots(driver, folder: Path, name: str) -> None:
    """The current page at each size (a phone: a mobile viewport, so the viewport meta tag applies),
    each shot taken once the reloaded page shows its title again."""
    title = _read(driver, lambda d: d.title)
    for size, (width, height) in SIZES.items():
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": size == "phone"},
        )
        driver.refresh()
        _until(
            driver,
            lambda d: d.execute_script(DOCUMENT) is not None and d.title == title,
            f"{name} at {size} size: {title!r}",
        )
        driver.save_screenshot(str(folder / f"{name}-{size}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _drawn(driver, chart_id: str) -> None:
    """The chart is an inline <svg> with drawn paths and a real size on the page."""

    def chart(d):
        svg = d.find_element(By.CSS_SELECTOR, f"#{chart_id} svg")
        lengths = d.execute_script(PATH_LENGTHS, svg)
        return svg.size, lengths

    size, paths = _read(driver, chart, f"chart #{chart_id}")
    assert size["width"] > 200 and size["height"] > 100, size
    assert len(paths) > 5 and any(length > 50 for length in paths)


def _cells(driver, table_id: str) -> list[list[str]]:
    return _read(
        driver,
        lambda d: [
            [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in d.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
        ],
        f"table #{table_id}",
    )


def _text(driver, by: str, value: str) -> str:
    return _read(driver, lambda d: d.find_element(by, value).text, f"{by} {value}")


# Its own waits add up past the suite's 300 s guard on a loaded machine (the models alone took 82 s with
# both cores busy, against 11 s idle): a hang guard of its own.
@pytest.mark.timeout(900)
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
        # Two studies: an evolution (its family tree), and two objectives (their Pareto front).
        alpha = {"type": "float", "low": 0.01, "high": 100.0, "log": True}
        evolution = api.post(
            "/studies",
            json={
                "base": {"symbol": "AAPL", "algorithm": "Ridge", **FAST},
                "space": {"hyperparameters.alpha": alpha, "horizon": {"type": "int", "low": 1, "high": 5}},
                "objective": "cv_ic",
                "sampler": "evolution",
                "pruner": "none",  # its population is 10 complete trials: trials 10 to 12 evolve
                "max_parallel": 1,
                "n_trials": 13,
            },
        ).json()["study_id"]
        pareto = api.post(
            "/studies",
            json={
                "base": {"symbol": "MSFT", "algorithm": "Ridge", **FAST},
                "space": {"hyperparameters.alpha": alpha, "horizon": {"type": "int", "low": 1, "high": 5}},
                "objective": ["cv_ic", "cv_rmse"],
                "sampler": "nsga2",
                "n_trials": 6,
            },
        ).json()["study_id"]
    sweep_ids = [
        r[0]
        for r in clean.execute("SELECT model_id FROM sweep_models WHERE sweep_id = %s", (sweep["sweep_id"],))
    ]
    done = wait_for_models(clean, [ridge, forest, child, *sweep_ids], timeout=240)
    assert {row["status"] for row in done.values()} == {"completed"}, done
    wait_for_jobs(clean, timeout=120)  # the backtests
    # The studies' trials train models too: every count and leaderboard below is read once they have
    # all ended (with the workers still running).
    deadline = time.monotonic() + 300
    while clean.execute(
        "SELECT count(*) FROM studies s WHERE s.id IN (%s, %s) AND (s.state = 'running' OR EXISTS"
        " (SELECT 1 FROM study_trials t WHERE t.study_id = s.id AND t.state = 'running'))",
        (evolution, pareto),
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "studies still running"
        time.sleep(0.5)
    wait_for_jobs(clean, timeout=120)
    trained = time.monotonic() - started
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots in {shots} (models trained in {trained:.1f} s)")

    # Overview (it refreshes itself: each read is of one whole document, read again if it reloaded).
    _open(browser, f"{base}/ui", "Overview", "workers")
    assert _read(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "script[data-refresh]")))
    assert [row[2] for row in _cells(browser, "workers")] == ["1", "2"]
    succeeded = clean.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = 'training' AND status = 'succeeded'"
    ).fetchone()[0]
    assert succeeded >= len(done)
    assert ["training", "succeeded", str(succeeded)] in _cells(browser, "queues")
    _drawn(browser, "throughput")
    _screenshots(browser, shots, "overview")
    for worker in workers:  # from here on, a submitted model stays queued (to be cancelled)
        worker.stop()

    # Models: the leaderboard by directional accuracy is the database's order, shown as stored (4 places).
    _open(browser, f"{base}/ui/models?sort=directional_accuracy&order=desc", "Models", "leaderboard")
    expected = clean.execute(
        "SELECT id, (metrics->>'directional_accuracy')::float8 FROM models"
        " ORDER BY (metrics->>'directional_accuracy')::float8 DESC NULLS LAST, id DESC"
    ).fetchall()
    shown = _cells(browser, "leaderboard")
    expected = expected[:PAGE_SIZE]  # the first page (the studies' models too)
    assert [int(row[0]) for row in shown] == [model_id for model_id, _ in expected]
    # (a pruned trial's model has no held-out metrics: a dash)
    assert [row[6] for row in shown] == ["-" if a is None else f"{a:.4f}" for _, a in expected]
    _screenshots(browser, shots, "models")
    # (the Pareto study's models are MSFT Ridge models)
    _open(browser, f"{base}/ui/models?symbol=msft&algorithm=RandomForest", "Models", "leaderboard")
    assert [int(row[0]) for row in _cells(browser, "leaderboard")] == [forest]

    # A model: metrics, folds, importances, predictions, backtest against buy and hold, lineage.
    _open(browser, f"{base}/ui/models/{ridge}", f"Model {ridge}:", "metrics")
    metrics = dict(clean.execute("SELECT metrics FROM models WHERE id = %s", (ridge,)).fetchone()[0])
    shown = {row[0]: row[1] for row in _cells(browser, "metrics")}
    assert shown["directional_accuracy"] == f"{metrics['directional_accuracy']:.4f}"
    assert shown["rmse"] == f"{metrics['rmse']:.4f}"
    assert len(_cells(browser, "folds")) == FAST["cv_folds"]
    for chart in ("importance-chart", "predictions-chart", "equity-chart"):
        _drawn(browser, chart)
    assert "buy and hold" in _text(browser, By.ID, "equity-chart")
    assert [row[1].split()[1] for row in _cells(browser, "lineage")] == [str(ridge), str(child)]
    _screenshots(browser, shots, "model")
    if os.environ.get("SFQ_UPDATE_SCREENSHOTS"):  # the README's picture, refreshed on request only
        (ROOT / "docs" / "screenshots").mkdir(exist_ok=True)
        shutil.copy(shots / "model-laptop.png", ROOT / "docs" / "screenshots" / "model-page.png")

    # The child's lineage names what changed.
    _open(browser, f"{base}/ui/models/{child}", f"Model {child}:", "lineage")
    assert "hyperparameters.alpha: 1.0 → 10.0" in _text(browser, By.ID, "lineage")

    # The sweep: progress, leaderboard with PSR, the best by Sharpe's DSR, the PBO, the metric by parameter.
    _open(browser, f"{base}/ui/sweeps/{sweep['sweep_id']}", f"Sweep {sweep['sweep_id']} ·", "progress")
    assert "completed 4" in _text(browser, By.ID, "progress")
    assert len(_cells(browser, "sweep-leaderboard")) == 4
    assert "best by Sharpe" in _text(browser, By.ID, "dsr") and "after 4 configurations" in _text(
        browser, By.ID, "dsr"
    )
    assert "probability of backtest overfitting" in _text(browser, By.ID, "pbo")
    _drawn(browser, "sweep-chart")
    _screenshots(browser, shots, "sweep")

    # The studies: progress, best so far, importances, the objective by parameter, the family tree of an
    # evolution and the Pareto front of two objectives (every trial has ended: waited for above).
    _open(browser, f"{base}/ui/studies/{evolution}", f"Study {evolution} ·", "progress")
    assert "finished (13 trials of 13)" in _text(browser, By.ID, "progress")
    assert len(_cells(browser, "study-trials")) == 13
    for chart_id in ("study-best", "study-importances", "study-parameters", "study-tree"):
        _drawn(browser, chart_id)
    _screenshots(browser, shots, "study")
    _open(browser, f"{base}/ui/studies/{pareto}", f"Study {pareto} ·", "progress")
    _drawn(browser, "study-pareto")
    _open(browser, f"{base}/ui", "Overview", "studies")
    assert [row[0] for row in _cells(browser, "studies")] == [str(pareto), str(evolution)]

    # Submit: an invalid request shows the API's message and creates nothing; a valid one a model.
    count = clean.execute("SELECT count(*) FROM models").fetchone()[0]
    _open(browser, f"{base}/ui/submit", "Submit a training request", "submit-button")
    _screenshots(browser, shots, "submit")
    browser.find_element(By.NAME, "symbol").send_keys("IBM")
    browser.find_element(By.NAME, "algorithm").send_keys("Ridge")
    browser.find_element(By.NAME, "horizon").send_keys("0")
    _post(browser, "submit-button", ("Submit a training request", "message"))
    assert "horizon: must be between 1 and 1000" in _text(browser, By.ID, "message")
    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == count
    _screenshots(browser, shots, "submit-refused")
    horizon = browser.find_element(By.NAME, "horizon")
    horizon.clear()
    horizon.send_keys("3")
    # The answer: the new model's page, or the form again with a message (reported by the assertion).
    _post(browser, "submit-button", ("Model ", "status"), ("Submit a training request", "message"))
    assert "/ui/models/" in browser.current_url, _text(browser, By.TAG_NAME, "main")
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
    _until(
        browser,
        lambda d: d.execute_script("return window.sfqMarker === undefined") and d.execute_script(DOCUMENT),
        f"model {queued}'s page reloading itself (every {REFRESH_S} s while queued)",
    )

    def typed(d) -> bool:
        """Type into the evolve form of the page now shown; true once that page holds the value (keys
        sent just before a reload went to the old page: typed again on the new one). Then mark the page
        and start a clock of its own with the page's refresh period."""
        field = d.find_element(By.CSS_SELECTOR, EVOLVE_HORIZON)
        if not field.get_attribute("value"):
            field.send_keys("7")
        return d.execute_script(
            "const field = document.querySelector(arguments[0]);"
            " if (document.readyState !== 'complete' || !field || field.value !== '7') return false;"
            " window.sfqMarker = 1; window.sfqTicks = 0;"
            " setInterval(() => { window.sfqTicks += 1; }, arguments[1] * 1000); return true;",
            EVOLVE_HORIZON,
            REFRESH_S,
        )

    _until(browser, typed, "7 typed into the evolve form's horizon")
    # Two periods of the page's clock: its own refresh timer (same period, started earlier) has fired
    # in between, however late a loaded machine runs it. A reload would end the wait (no sfqTicks).
    _until(
        browser,
        lambda d: d.execute_script("return window.sfqTicks === undefined || window.sfqTicks >= 2"),
        f"two refresh periods ({REFRESH_S} s) on model {queued}'s page",
    )
    assert browser.execute_script("return window.sfqMarker") == 1
    assert _read(browser, lambda d: d.find_element(By.CSS_SELECTOR, EVOLVE_HORIZON).get_attribute("value"))

    # Cancel it with its button: the page comes back showing it cancelled.
    _post(browser, "cancel", (f"Model {queued}:", "status"))
    assert browser.current_url.endswith(f"/ui/models/{queued}")
    assert "cancelled" in _text(browser, By.ID, "status")
    assert (
        clean.execute("SELECT status::text FROM models WHERE id = %s", (queued,)).fetchone()[0] == "cancelled"
    )
    print(f"dashboard test took {time.monotonic() - started:.1f} s")
