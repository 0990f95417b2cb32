"""docs/grafana/sfq-dashboard.json asks only for what GET /metrics exports: every metric name in its
PromQL, and every label it groups or selects by, is in the text a real API serves after a real worker
trained a model and an alias points at it (so every metric has samples, the histogram's buckets and the
strategy gauges included)."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT, insert_request, wait_for_models

DASHBOARD = ROOT / "docs" / "grafana" / "sfq-dashboard.json"
PROMETHEUS_TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped sample


def _expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in panels)
    return [target["expr"] for panel in panels for target in panel["targets"]]


def _exported(text: str) -> dict[str, set[str]]:
    """Each sample's metric name with the label names it is served with."""
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = re.match(r"^([a-z_:]+)(?:\{(.*)\})? ", line)
        assert match, line
        labels.setdefault(match[1], set()).update(re.findall(r'([a-z_]+)="', match[2] or ""))
    return labels


def test_the_dashboard_asks_only_for_metrics_and_labels_that_metrics_exports(clean, start_worker, api):
    start_worker(1, SFQ_HOSTNAME="grafana-host")
    model_id, _, _ = insert_request(
        clean, {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60}
    )
    assert wait_for_models(clean, [model_id])[model_id]["status"] == "completed"
    # An alias on it: the strategy gauges have a sample (NaN: no live record, so no verdict, yet).
    clean.execute("SELECT sfq_move_alias('grafana-1', 'production', %s, 'dashboard test')", (model_id,))
    response = api.get("/metrics")
    assert response.status_code == 200
    exported = _exported(response.text)
    assert {"sfq_training_duration_seconds_bucket", "sfq_worker_heartbeat_age_seconds"} <= exported.keys()

    expressions = _expressions()
    used = set()
    for expr in expressions:
        names = set(re.findall(r"\bsfq_[a-z_]+\b", expr))
        assert names, expr
        missing = names - exported.keys()
        assert not missing, f"{expr}: not exported by GET /metrics: {missing}"
        used |= names
        allowed = set().union(*(exported[name] for name in names)) | PROMETHEUS_TARGET_LABELS
        grouped = {
            label.strip()
            for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in clause.split(",")
            if label.strip()
        }
        selected = {
            label
            for selector in re.findall(r"\{([^}]*)\}", expr)
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector)
        }
        unknown = (grouped | selected) - allowed
        assert not unknown, f"{expr}: labels {unknown} are not on {sorted(names)}"
    # The panels the dashboard promises: queues, workers, training times, failures, the API's pool, and
    # the strategy aliases' decay flags.
    for name in (
        "sfq_jobs",
        "sfq_running_jobs",
        "sfq_workers",
        "sfq_worker_heartbeat_age_seconds",
        "sfq_models_finished_per_minute",
        "sfq_training_duration_seconds_bucket",
        "sfq_api_pool_connections",
        "sfq_api_pool_waiting",
        "sfq_strategy_decayed",
        "sfq_strategy_live_sharpe",
        "sfq_strategy_backtest_sharpe",
        "sfq_strategy_sharpe_standard_error",
        "sfq_strategy_live_bars",
    ):
        assert name in used, name
