"""Read paths that do not grow with the tables (issue 15): counters kept by triggers equal a count of the rows
whatever changed them, each sortable metric's order can be read from its index, keyset pages walk the same
order as offset pages, and bad leaderboard parameters are refused naming the parameter. (Speed is the
benchmark's business: `python -m bench --scenario reads`.)"""

from __future__ import annotations

import html
import re

import psycopg

from bench.reads import ALGORITHMS, FILL_MODELS
from queue_app import gateway, params
from queue_app.ui.html import url
from queue_app.ui.leaderboard import PAGE_SIZE
from queue_app.vocabulary import SORTABLE_METRICS

COUNTED = {
    "sfq_model_counts": "SELECT symbol, algorithm, status::text, count(*) FROM models GROUP BY 1, 2, 3",
    "sfq_job_counts": "SELECT queue_name, status::text, count(*) FROM procrastinate_jobs GROUP BY 1, 2",
    "sfq_training_durations": (
        "SELECT algorithm, sfq_duration_bucket(s), count(*), round(sum(s)::numeric, 3)"
        " FROM (SELECT algorithm, sfq_training_seconds(status, started_at, finished_at) AS s FROM models) m"
        " WHERE s IS NOT NULL GROUP BY 1, 2"
    ),
}
KEPT = {
    "sfq_model_counts": "SELECT symbol, algorithm, status::text, models FROM sfq_model_counts WHERE models>0",
    "sfq_job_counts": "SELECT queue_name, status::text, jobs FROM sfq_job_counts WHERE jobs <> 0",
    "sfq_training_durations": (
        "SELECT algorithm, le, models, round(seconds::numeric, 3) FROM sfq_training_durations"
        " WHERE models <> 0"
    ),
}


def _fill(conn: psycopg.Connection, first: int, last: int) -> None:
    conn.execute(FILL_MODELS, {"first": first, "last": last, "total": last, "algorithms": list(ALGORITHMS)})


def _counters_match(conn: psycopg.Connection) -> None:
    for table, count in COUNTED.items():
        assert sorted(conn.execute(KEPT[table]).fetchall()) == sorted(conn.execute(count).fetchall()), table


def test_counters_equal_a_count_of_the_rows_after_every_kind_of_change(clean):
    _counters_match(clean)
    _fill(clean, 1, 300)  # one statement, many keys
    _counters_match(clean)
    clean.execute(  # requests: their models counted once for the statement, deduplicated ones not at all
        "INSERT INTO training_requests (symbol, algorithm, hyperparameters)"
        " SELECT 'MSFT', 'Ridge', jsonb_build_object('alpha', i % 15 + 1) FROM generate_series(1, 20) i"
    )
    clean.execute(
        'SELECT sfq_submit_sweep(\'{"symbol": "AAPL", "algorithm": "Ridge"}\', \'{"horizon": [1, 2, 3]}\')'
    )
    assert clean.execute("SELECT count(*) FROM models WHERE symbol IN ('MSFT', 'AAPL')").fetchone() == (18,)
    _counters_match(clean)
    clean.execute(
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
        " SELECT 'training', 'train_model', '{}', 'todo' FROM generate_series(1, 40)"
    )
    clean.execute(
        "UPDATE models SET status = 'completed', started_at = now() - interval '3 seconds',"
        " finished_at = now(), metrics = '{\"ic\": 0.1}' WHERE status = 'queued'"
    )
    clean.execute("UPDATE models SET status = 'queued', started_at = NULL WHERE id % 7 = 0")
    clean.execute("UPDATE models SET progress = '{}' WHERE id < 50")  # no status change: nothing moves
    clean.execute("UPDATE models SET finished_at = finished_at + interval '1.5 seconds' WHERE id < 80")
    clean.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id % 3 = 0")
    clean.execute("DELETE FROM procrastinate_jobs WHERE id % 5 = 0")
    clean.execute("DELETE FROM sweeps")  # its models are deleted next
    clean.execute("DELETE FROM model_attempts WHERE model_id > 250")
    clean.execute("DELETE FROM models WHERE id > 250")
    _counters_match(clean)
    clean.execute("SELECT sfq_recount()")  # a recount finds what the triggers kept
    _counters_match(clean)
    clean.execute("TRUNCATE models, procrastinate_jobs CASCADE")
    _counters_match(clean)
    assert clean.execute("SELECT count(*) FROM sfq_model_counts WHERE models <> 0").fetchone() == (0,)


def _page(conn: psycopg.Connection, query: params.ModelQuery) -> gateway.Call:
    """list_models of a query, read as its counts say."""
    return gateway.list_models(query, gateway.run(conn, gateway.count_models(query)))


def _executed(conn: psycopg.Connection, call: gateway.Call) -> list[dict]:
    """The plan nodes a call's statement ran (EXPLAIN ANALYZE): a part not reached shows no loops, and a
    part set to FALSE no rows (what stays of it, a Sort over nothing, runs)."""
    plan = conn.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + call.statement().as_string(conn), call.params
    ).fetchone()[0][0]["Plan"]
    nodes, todo = [], [plan]
    while todo:
        node = todo.pop()
        if node.get("Actual Loops", 0) > 0:
            nodes.append(node)
            todo += node.get("Plans", [])
    return nodes


def test_each_sortable_metric_is_read_in_order_from_its_index(clean):
    _fill(clean, 1, 50)
    clean.execute("ANALYZE models")
    clean.execute("SET enable_seqscan = off")
    clean.execute("SET enable_sort = off")  # the order must come from an index, or the plan shows a Sort
    for metric in SORTABLE_METRICS:
        for order in ("asc", "desc"):
            query = params.ModelQuery.parse({"sort": metric, "order": order, "limit": "10"})
            ran = _executed(clean, _page(clean, query))
            indexes = {node.get("Index Name") for node in ran}
            assert f"models_metric_{metric}" in indexes, (metric, order, ran)
            sorted_rows = [node for node in ran if node["Node Type"] == "Sort" and node["Actual Rows"]]
            assert not sorted_rows, (metric, order, ran)


def test_a_filter_few_models_match_reads_those_models_not_an_index_walk(clean):
    """A symbol with an algorithm that few or no models have, or a status few models of a symbol have: the
    page reads about the matching rows (from the pair's index, or the filters' together), where walking
    the metric's index, or one filter's, until a page is full would read all of its rows."""
    _fill(clean, 1, 800)  # symbol g % 50, algorithm g % 8: an odd symbol never has an even algorithm
    clean.execute("UPDATE models SET status = 'failed' WHERE id = 8")  # SYM8's one failure
    clean.execute("ANALYZE models")
    clean.execute("SET enable_seqscan = off")
    absent = {"symbol": "SYM7", "algorithm": ALGORITHMS[0], "sort": "ic", "limit": "20"}
    present = {**absent, "algorithm": ALGORITHMS[7]}  # g % 200 = 7: 4 models of 800, all completed
    failed = {"status": "failed", "symbol": "SYM8", "limit": "20"}
    for given, expected in ((absent, 0), (present, 4), (failed, 1)):
        ran = _executed(clean, _page(clean, params.ModelQuery.parse(given)))
        read = {node["Index Name"] for node in ran if node.get("Index Name", "").startswith("models_")}
        assert not {name for name in read if name.startswith("models_metric_")}, (given, ran)
        if "algorithm" in given:  # the pair's index, or none when the counters count no such model
            assert read == ({"models_symbol_algorithm"} if expected else set()), (given, ran)
        touched = sum(
            node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            for node in ran
            if node.get("Relation Name") == "models"
        )
        assert touched <= 2 * expected, (given, touched)
    broad = _executed(clean, _page(clean, params.ModelQuery.parse({"sort": "ic", "limit": "20"})))
    assert "models_metric_ic" in {node.get("Index Name") for node in broad}  # a page early in the index


def _walk(conn: psycopg.Connection, given: dict[str, str], by_cursor: bool) -> list[int]:
    """Every id, page after page of 7 (by `next` cursors or by offsets)."""
    seen: list[int] = []
    where: dict[str, str] = {}
    while True:
        query = params.ModelQuery.parse({**given, "limit": "7", **where})
        rows, after = query.page(gateway.leaderboard(conn, query))
        seen += [row["id"] for row in rows]
        if after is None:
            return seen
        where = {"after": after} if by_cursor else {"offset": str(len(seen))}


def _ranked(conn: psycopg.Connection, given: dict[str, str]) -> list[int]:
    """The leaderboard's order, computed here from every matching row: the completed models with the
    metric by it then id, the others after them by id, all in the order asked."""
    rows = conn.execute(
        "SELECT id, status::text, metrics->%s FROM models"
        " WHERE (%s::text IS NULL OR symbol = %s) AND (%s::text IS NULL OR algorithm = %s)",
        (given.get("sort", "id"), *[given.get(f) for f in ("symbol", "symbol", "algorithm", "algorithm")]),
    ).fetchall()
    descending = given.get("order", "desc") == "desc"
    ranked = sorted(
        ((value, id_) for id_, status, value in rows if status == "completed" and isinstance(value, float)),
        reverse=descending,
    )
    rest = sorted((id_ for id_, status, value in rows if (value, id_) not in ranked), reverse=descending)
    return [id_ for _, id_ in ranked] + rest


def test_pages_follow_the_leaderboard_order_however_the_first_part_is_read(clean):
    """By cursor and by offset, for filters that many models match (the metric's index walked) and that
    few do (their models read and sorted, from some offset on for every filter), the same order."""
    _fill(clean, 1, 60)  # 90% completed with every metric; a few with an equal ic (ties broken by id)
    clean.execute("UPDATE models SET metrics = metrics || '{\"ic\": 0.25}' WHERE id IN (3, 13, 23)")
    clean.execute("UPDATE models SET metrics = metrics - 'r2' WHERE id IN (5, 6)")
    for given in (
        {},
        {"sort": "ic"},
        {"sort": "r2", "order": "asc"},
        {"sort": "ic", "algorithm": "Ridge"},
        {"sort": "mae", "order": "asc", "symbol": "SYM7"},
        {"sort": "ic", "symbol": "SYM7", "algorithm": ALGORITHMS[7]},
        {"sort": "ic", "symbol": "SYM7", "algorithm": ALGORITHMS[0]},  # none
    ):
        by_cursor, by_offset = _walk(clean, given, True), _walk(clean, given, False)
        assert by_cursor == by_offset == _ranked(clean, given), given
        expected = gateway.run(clean, gateway.count_models(params.ModelQuery.parse(given)))
        assert len(by_cursor) == expected.total, given
    ranked = _walk(clean, {"sort": "r2", "order": "asc"}, True)
    assert set(ranked[-9:]) >= {5, 6}  # without r2: after every model with it


def _dashboard_page(api, href: str) -> tuple[list[int], str | None]:
    """The models the dashboard's models page lists, in order, and where its "next" leads (None: none)."""
    response = api.get(href)
    assert response.status_code == 200, response.text
    ids = [int(i) for i in re.findall(r'<input type="checkbox" name="id" value="([0-9]+)"', response.text)]
    following = re.search(r'<a href="([^"]+)">next →</a>', response.text)
    return ids, html.unescape(following.group(1)) if following else None


def test_the_dashboards_next_page_starts_after_the_last_row_shown(clean, api):
    """The models page's "next" names the last row shown (`after`, keyset) and the pages it leads to are
    the leaderboard's order to its end; a page asked for by its number is the same page, read by offset."""
    _fill(clean, 1, 3 * PAGE_SIZE + 7)
    for given in ({}, {"sort": "ic"}, {"sort": "rmse", "order": "asc"}, {"sort": "ic", "algorithm": "Ridge"}):
        expected, shown, pages = _ranked(clean, given), [], []
        href: str | None = url("/ui/models", **given)
        while href is not None:
            ids, href = _dashboard_page(api, href)
            assert href is None or "after=" in href, href
            shown += ids
            pages.append(ids)
        assert shown == expected, given
        assert len(pages) == -(-len(expected) // PAGE_SIZE), given
        if len(pages) > 2:
            assert _dashboard_page(api, url("/ui/models", **given, page=3))[0] == pages[2], given


def test_bad_leaderboard_parameters_are_422_naming_the_parameter(clean, api):
    api.post("/train", json={"symbol": "AAPL", "algorithm": "Ridge"})
    cases = [
        ({"sort": "sharpe_of_nothing"}, "sort"),
        ({"offset": "1"}, "offset"),  # one model: offset 1 is past the end
        ({"limit": str(params.MAX_PAGE + 1)}, "limit"),
        ({"after": "0.5:12"}, "after"),  # a metric cursor in the id order
        ({"sort": "ic", "after": "12"}, "after"),
        ({"sort": "ic", "after": "nan:12"}, "after"),
    ]
    for given, field in cases:
        response = api.get("/models", params=given)
        assert response.status_code == 422 and response.json()["detail"] == {"field": field}, given
    page = api.get("/models", params={"limit": 1}).json()
    assert page["total"] == 1 and page["next"] is not None
    assert api.get("/models", params={"after": page["next"]}).json()["models"] == []


def test_concurrent_writers_never_wait_on_a_counter_row_and_folds_keep_counts_exact(clean, database):
    """Each backend adds to its own rows of the changes (0021): a writer holding its transaction open does
    not hold up another writer of the same counters, and folding the changes into the totals, with a
    writer's rows locked meanwhile, changes no count."""
    insert = (
        "INSERT INTO training_requests (symbol, algorithm, hyperparameters)"
        " VALUES ('MSFT', 'Ridge', jsonb_build_object('alpha', %s::float8))"
    )
    with psycopg.connect(database) as held, psycopg.connect(database, autocommit=True) as other:
        held.execute(insert, (0.5,))
        held.commit()
        while held.execute("SELECT txid_current() % 256").fetchone() == (0,):  # it would fold itself
            held.commit()
        held.execute(insert, (1.5,))  # open: its counter rows locked, its model uncommitted
        other.execute("SET lock_timeout = '2s'")  # waiting on a row lock would fail the statement
        for alpha in (2.5, 3.5):
            other.execute(insert, (alpha,))
        assert other.execute("SELECT sfq_fold_counts()").fetchone() == (True,)  # skips `held`'s rows
        _counters_match(other)
        held.commit()
    _counters_match(clean)
    assert clean.execute("SELECT count(*) FROM sfq_model_count_changes").fetchone() != (0,)  # `held`'s
    assert clean.execute("SELECT sfq_fold_counts()").fetchone() == (True,)
    for changes in ("sfq_model_count_changes", "sfq_job_count_changes", "sfq_training_duration_changes"):
        assert clean.execute(f"SELECT count(*) FROM {changes}").fetchone() == (0,), changes
    _counters_match(clean)
    assert clean.execute(
        "SELECT models FROM sfq_model_counts WHERE symbol = 'MSFT' AND status = 'queued'"
    ).fetchone() == (4,)
    # One writing transaction in 256 folds on its own (by its transaction id; the server's other
    # databases take ids too): insert, one per transaction, until a fold shows in the totals.
    for alpha in range(40 * 256):
        clean.execute(insert, (alpha + 10,))
        if alpha % 16 == 0 and clean.execute(
            "SELECT count(*) FROM sfq_model_count_totals WHERE models > 4"
        ).fetchone() == (1,):
            break
    else:
        raise AssertionError("10,240 transactions and no fold")
    _counters_match(clean)
