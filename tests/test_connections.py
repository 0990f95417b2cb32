"""A worker daemon's connections, counted while it works: at most three while training (README, "More
machines"), none of them the training process's; and the polling mode (SFQ_POOLER=transaction) through a
real PgBouncer in transaction mode: jobs done, a killed daemon's job rescued, two daemons served by fewer
server connections than they hold.

Connections are counted two ways, sampled while the daemon trains: by name in pg_stat_activity
(`sfq-worker:N:role`), and by the TCP sockets that the daemon's process tree (fork server and training
process included) holds to the server, whatever their name."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bench import pooler
from bench.common import descendants
from queue_app.config import POOLED_NAME
from tests.conftest import (
    QUICK_RESCUE,
    SLOW,
    Sampler,
    insert_request,
    run_sfq,
    wait_for_jobs,
    wait_for_models,
    wait_until,
)
from workers.daemon.app import POLL_SPREAD, PROCRASTINATE_FETCH, DaemonConnector, SpreadPollingWorker, own_app

FAST = {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300, "test_window": 60}
SLOW_MSFT = {"symbol": "MSFT", **SLOW}  # long enough to sample, and to kill the daemon during
ALPHA = {"type": "float", "low": 0.001, "high": 100.0, "log": True}
MAX_CONNECTIONS = 3  # per worker daemon while training: listen, queue, data
POLLED = {"SFQ_POOLER": "transaction", "SFQ_POLL_INTERVAL_S": "1"}
BOUNCER_POOL_SIZE = 2  # server connections PgBouncer may open to the run's database


# ---------------------------------------------------------------------------------------------------
# Counting: a process tree's TCP connections (from /proc), pg_stat_activity's rows by name.


def tcp_connections(pid: int, port: int) -> list[str]:
    """Established TCP connections to `port` held by `pid` or any of its descendants, each named by its
    holders and its local port (`pid[,pid]:port`), so that a count over the limit says whose they are.
    Counted by inode: /proc/net/tcp is read a page at a time, and sockets opened or closed meanwhile (the
    full suite opens and closes hundreds) can show a line twice. Seen here: 27 of 1,273 reads listed an
    established socket twice while two threads opened and closed connections. A daemon's two connections
    listed twice give the "4 connections per daemon" that failed the PgBouncer test below now and then."""
    holders: dict[int, list[int]] = {}  # socket inode -> the processes holding it
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{member}/fd/{fd}")
                    if target.startswith("socket:["):
                        holders.setdefault(int(target[8:-1]), []).append(member)
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], int(fields[9])
            if inode in holders and remote_port == port and state == "01":  # 01: ESTABLISHED
                found[inode] = f"{','.join(map(str, sorted(set(holders[inode]))))}:{local_port}"
    return list(found.values())


def server_port(url: str) -> int:
    return int(conninfo_to_dict(url).get("port") or 5432)


def running(conn: psycopg.Connection, model_id: int) -> bool:
    return conn.execute("SELECT status = 'running' FROM models WHERE id = %s", (model_id,)).fetchone()[0]


def create_study(conn: psycopg.Connection, n_trials: int) -> int:
    study = {
        "base": FAST,
        "space": {"hyperparameters.alpha": ALPHA},
        "objective": "cv_ic",
        "n_trials": n_trials,
    }
    return conn.execute("SELECT id FROM sfq_create_study(%s::jsonb)", (json.dumps(study),)).fetchone()[0]


def study_state(conn: psycopg.Connection, study_id: int) -> str:
    return conn.execute("SELECT state FROM studies WHERE id = %s", (study_id,)).fetchone()[0]


def forecast_status(conn: psycopg.Connection, forecast_id: int) -> str:
    return conn.execute("SELECT status FROM model_forecasts WHERE id = %s", (forecast_id,)).fetchone()[0]


# ---------------------------------------------------------------------------------------------------
# Directly on PostgreSQL, with LISTEN.


def test_a_training_daemon_holds_at_most_three_connections(clean, start_worker, database):
    """While a training runs, the daemon also answers a forecast, a backtest and a study's advances (its
    other worker): every connection it holds is sampled; none is the training process's."""
    worker = start_worker(1)
    trained, _, _ = insert_request(clean, FAST)
    assert wait_for_models(clean, [trained])[trained]["status"] == "completed"
    wait_for_jobs(clean)  # its default backtest too

    by_name = (
        "SELECT application_name, count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'sfq-worker:1:%%' GROUP BY 1"
    )
    port = server_port(database)
    slow, _, _ = insert_request(clean, SLOW_MSFT)
    with psycopg.connect(database, autocommit=True) as sampling:

        def sample() -> dict:
            named = dict(sampling.execute(by_name).fetchall())
            tcp = len(tcp_connections(worker.pid, port))
            return {"named": sum(named.values()), "roles": named, "tcp": tcp}

        with Sampler(sample, lambda: running(sampling, slow)) as sampler:
            wait_until(lambda: running(clean, slow), "training")
            forecast = clean.execute("SELECT id FROM sfq_request_forecast(%s)", (trained,)).fetchone()[0]
            backtest = clean.execute(
                "SELECT id FROM sfq_request_simulation(%s, 'long_only')", (trained,)
            ).fetchone()[0]
            study = create_study(clean, n_trials=2)
            assert wait_for_models(clean, [slow], timeout=240)[slow]["status"] == "completed"
    wait_until(lambda: forecast_status(clean, forecast) != "queued", "forecast answered")
    assert forecast_status(clean, forecast) == "completed"
    wait_until(lambda: study_state(clean, study) != "running", "study finished", timeout=240)
    assert study_state(clean, study) == "finished"
    simulation = "SELECT status FROM simulation_history WHERE id = %s"
    assert clean.execute(simulation, (backtest,)).fetchone() == ("completed",)
    roles = Counter()
    for sample in sampler.samples:
        roles.update({role.rsplit(":", 1)[1] for role in sample["roles"]})
    print(
        f"\nworker 1 while training ({len(sampler.samples)} samples): at most {sampler.most('named')} "
        f"connections by name, {sampler.most('tcp')} by its processes' sockets; roles seen {dict(roles)}"
    )
    assert len(sampler.samples) >= 10, "too few samples while training"
    assert sampler.most("named") <= MAX_CONNECTIONS and sampler.most("tcp") <= MAX_CONNECTIONS
    assert set(roles) <= {"listen", "queue", "data"}, roles
    assert all(count <= 1 for sample in sampler.samples for count in sample["roles"].values())
    # Every socket the daemon's processes hold is one of its named connections: none unnamed, none
    # the training process's.
    assert all(sample["tcp"] <= sample["named"] for sample in sampler.samples), sampler.samples


# ---------------------------------------------------------------------------------------------------
# Behind PgBouncer in transaction mode: polling, no session state.


@pytest.fixture
def pgbouncer(database) -> Iterator[str]:
    """A PgBouncer of this test's own in front of the run's server (pool_mode=transaction, at most
    BOUNCER_POOL_SIZE server connections per database): the run's database through it.
    Tests ask for it before start_worker and start_api: fixtures end in reverse order, so their daemons
    stop while PgBouncer still answers (stopped after it, each one waited out Process.stop's 30 s)."""
    if pooler.binary() is None:
        pytest.skip("no pgbouncer binary (apt-get install pgbouncer; scripts/setup does as root)")
    with pooler.pgbouncer(database, BOUNCER_POOL_SIZE, 100) as bouncer:
        yield bouncer.url(database)


# sfq's sessions on the server by name, how many of each (the test's own are unnamed).
SFQ_SESSIONS = (
    "SELECT application_name, count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name LIKE 'sfq%' GROUP BY 1"
)


def listens(conn: psycopg.Connection) -> list:
    return conn.execute(
        "SELECT application_name, query FROM pg_stat_activity"
        " WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
    ).fetchall()


def test_polling_daemons_work_behind_pgbouncer_in_transaction_mode(pgbouncer, clean, start_worker, database):
    """Two daemons through PgBouncer (pool_mode=transaction, 2 server connections): trainings, their
    backtests, a forecast and a study (transactions holding row locks) all done, picked up by polling
    (SFQ_POLL_INTERVAL_S=1; nothing LISTENs); each daemon holds 2 connections to PgBouncer while
    training, and PgBouncer serves the 4 through at most 2."""
    url = pgbouncer
    workers = [start_worker(1, url=url, **POLLED), start_worker(2, url=url, **POLLED)]
    trained, _, _ = insert_request(clean, FAST)
    assert wait_for_models(clean, [trained])[trained]["status"] == "completed"

    bouncer_port = server_port(url)
    slow, _, _ = insert_request(clean, SLOW_MSFT)
    with psycopg.connect(database, autocommit=True) as sampling:

        def sample() -> dict:
            sessions = dict(sampling.execute(SFQ_SESSIONS).fetchall())
            sockets = [tcp_connections(worker.pid, bouncer_port) for worker in workers]
            return {
                "sockets": sockets,
                "daemon": max(map(len, sockets)),
                # PgBouncer's server sessions, whatever the way it reaches the server (TCP, or the
                # private cluster's Unix socket): every one is named as its clients are.
                "server": sessions.get(POOLED_NAME, 0),
                "listens": len(listens(sampling)),
                "names": set(sessions),
            }

        with Sampler(sample, lambda: running(sampling, slow)) as sampler:
            wait_until(lambda: running(clean, slow), "training")
            forecast = clean.execute("SELECT id FROM sfq_request_forecast(%s)", (trained,)).fetchone()[0]
            study = create_study(clean, n_trials=3)
            more = [insert_request(clean, {**FAST, "train_window": 300 + i})[0] for i in range(1, 4)]
            finished = wait_for_models(clean, [slow, *more], timeout=240)
    assert {model["status"] for model in finished.values()} == {"completed"}, finished
    wait_until(lambda: study_state(clean, study) != "running", "study finished", timeout=240)
    assert study_state(clean, study) == "finished"
    assert clean.execute(
        "SELECT count(*) FROM study_trials WHERE study_id = %s AND state = 'complete'", (study,)
    ).fetchone() == (3,)
    wait_until(lambda: forecast_status(clean, forecast) != "queued", "forecast answered")
    assert forecast_status(clean, forecast) == "completed"
    wait_for_jobs(clean, timeout=120)
    done, backtests = clean.execute(
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM simulation_history"
    ).fetchone()
    assert done == backtests >= 5 + 3  # every training's default backtest (the study's 3 trials too)
    assert {m["worker_pid"] for m in finished.values()} <= {w.pid for w in workers}
    assert listens(clean) == [], "a daemon LISTENs behind a transaction pooler"
    print(
        f"\nbehind PgBouncer ({len(sampler.samples)} samples while training): at most "
        f"{sampler.most('daemon')} connections per daemon, {sampler.most('server')} server connections"
    )
    assert len(sampler.samples) >= 10, "too few samples while training"
    over = [sample["sockets"] for sample in sampler.samples if sample["daemon"] > 2][:5]
    assert not over, (
        f"a daemon held more than 2 connections (holders:local port; daemons {[w.pid for w in workers]}):"
        f" {over}\n" + "\n".join(f"--- daemon {w.pid}:\n{w.output[-3000:]}" for w in workers)
    )
    assert sampler.most("listens") == 0
    assert 1 <= sampler.most("server") <= BOUNCER_POOL_SIZE
    # One name for every connection: PgBouncer SETs a server session's name whenever it passes to a
    # client named otherwise (config.Settings.connection_options).
    assert set().union(*(sample["names"] for sample in sampler.samples)) == {POOLED_NAME}
    for worker in workers:
        assert "polling every 1 s, no LISTEN" in worker.output
        assert "prepared statement" not in worker.output, worker.output


# `scripts/test -m slow`: polling behind PgBouncer above and test_resilience's rescue are its counterparts.
@pytest.mark.slow
def test_a_killed_daemons_job_is_rescued_through_pgbouncer(pgbouncer, clean, start_worker):
    """kill -9 the daemon that trains; started again, it rescues the job (heartbeats and the rescue's
    row locks, through the pooler) and trains it to completion: attempt 1 lost, attempt 2 completed."""
    url = pgbouncer
    doomed = start_worker(1, url=url, **POLLED, **QUICK_RESCUE)
    model_id, _, _ = insert_request(clean, SLOW_MSFT)
    doomed.wait_for_line(rf"model {model_id} starting .* training process (\d+)")
    doomed.popen.send_signal(signal.SIGKILL)
    doomed.popen.wait()
    again = start_worker(1, url=url, **POLLED, **QUICK_RESCUE)
    again.wait_for_line(rf"rescue: model {model_id} job \d+ lost its worker: rescued", timeout=120)
    model = wait_for_models(clean, [model_id], timeout=240)[model_id]
    assert (model["status"], model["attempts"], model["worker_pid"]) == ("completed", 2, again.pid)
    attempts = clean.execute(
        "SELECT attempt, outcome FROM model_attempts WHERE model_id = %s ORDER BY attempt", (model_id,)
    ).fetchall()
    assert attempts == [(1, "lost"), (2, "completed")]


def test_a_running_model_is_cancelled_through_pgbouncer(pgbouncer, clean, start_worker, database):
    """Without LISTEN, a cancellation reaches the running job by polling (SFQ_POLL_INTERVAL_S): its
    training process is killed and the model ends cancelled; the daemon goes on with the next job."""
    url = pgbouncer
    worker = start_worker(1, url=url, **POLLED)
    slow, _, _ = insert_request(clean, {**SLOW_MSFT, "hyperparameters": json.dumps({"n_estimators": 3000})})
    worker.wait_for_line(rf"model {slow} starting .* training process (\d+)")
    cancel = run_sfq("cancel", str(slow), url=database)
    assert cancel.returncode == 0, cancel.stderr
    worker.wait_for_line(rf"model {slow}: cancelled; training process killed", timeout=60)
    assert wait_for_models(clean, [slow])[slow]["status"] == "cancelled"
    after, _, _ = insert_request(clean, FAST)
    assert wait_for_models(clean, [after])[after]["status"] == "completed"


def test_an_idle_workers_polls_are_spread_around_the_interval(database):
    """Each wait between an idle worker's polls is drawn within 1 -/+ POLL_SPREAD of the interval
    (SpreadPollingWorker), so that a fleet's daemons that emptied the queue together do not poll together
    (README, "More machines"). Procrastinate's own worker waits the whole interval every time. A worker
    polling (no LISTEN) a queue of its own on the run's database through a daemon's connector, each wait
    timed there: from a fetch's answer to the next fetch."""
    interval, polls = 0.2, 41
    fetches: list[tuple[float, float]] = []  # (sent, answered)

    class Timed(DaemonConnector):
        async def execute_query_one_async(self, query: str, **arguments):
            sent = time.monotonic()
            answer = await super().execute_query_one_async(query, **arguments)
            if query == PROCRASTINATE_FETCH:
                fetches.append((sent, time.monotonic()))
            return answer

    async def poll() -> None:
        polling = own_app(Timed(database, 1, [], {}, listens=False))
        async with polling.open_async():
            worker = SpreadPollingWorker(
                polling,
                queues=["sfq-test-polls"],
                listen_notify=False,
                fetch_job_polling_interval=interval,
                install_signal_handlers=False,
            )
            running = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 120
            while len(fetches) < polls and not running.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            worker.stop()
            await running

    asyncio.run(poll())
    assert len(fetches) >= polls
    waits = [sent - answered for (_, answered), (sent, _) in itertools.pairwise(fetches)]
    assert min(waits) >= interval * (1 - POLL_SPREAD)  # a wait is never shorter than the least drawn
    # Drawn anew each time: of 40 waits, about 16 under 0.9 of the interval and 16 over 1.1. Fewer than 3
    # under has odds of 1 in 2 million, or 1 in 1,000 if a busy machine made every wait 30 ms late (a
    # late wait can only add to the count over 1.1).
    assert sum(wait < 0.9 * interval for wait in waits) >= 3, waits
    assert sum(wait > 1.1 * interval for wait in waits) >= 3, waits


def test_idle_workers_poll_less_often_as_the_fleet_grows(clean, start_worker):
    """Each daemon paces its idle polls by the fleet's size, as the fleet's round counts it: at least the
    daemons that beat within the rescue threshold times SFQ_POLL_GAP_S, never under SFQ_POLL_INTERVAL_S.
    39 other daemons' rows (as their beats leave them), then none."""
    clean.execute(
        "INSERT INTO sfq_workers (worker_id, host, pid, instance)"
        " SELECT 1000000 + i, 'elsewhere', i, 1 FROM generate_series(1, 39) i"
    )
    pace = {"SFQ_POLL_GAP_S": "0.1", "SFQ_HEARTBEAT_S": "1", "SFQ_RESCUE_AFTER_S": "600"}
    worker = start_worker(1, **POLLED, **pace)
    worker.wait_for_line(
        r"worker 1: polling every 4 s when idle \(a fleet of 40 daemons, SFQ_POLL_GAP_S 0.1\)"
    )
    clean.execute("DELETE FROM sfq_workers WHERE host = 'elsewhere'")
    worker.wait_for_line(r"worker 1: polling every 1 s when idle \(a fleet of 1 daemon, SFQ_POLL_GAP_S 0.1\)")
    assert clean.execute("SELECT daemons FROM sfq_fleet_round").fetchone() == (1,)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SFQ_POOLER": "session"}, "SFQ_POOLER must be one of none, transaction, got 'session'"),
        ({"SFQ_POLL_INTERVAL_S": "0.01"}, "SFQ_POLL_INTERVAL_S must be at least 0.1, got 0.01"),
        ({"SFQ_POLL_INTERVAL_S": "soon"}, "SFQ_POLL_INTERVAL_S must be a finite number, got 'soon'"),
        ({"SFQ_POLL_INTERVAL_S": "nan"}, "SFQ_POLL_INTERVAL_S must be a finite number, got 'nan'"),
        ({"SFQ_POLL_GAP_S": "-0.01"}, "SFQ_POLL_GAP_S must be at least 0, got -0.01"),
    ],
)
def test_a_bad_pooler_setting_stops_the_worker_saying_which(clean, database, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_sfq("worker", "1", url=database, timeout=60)
    assert (result.returncode, result.stderr.strip()) == (1, f"sfq: {message}")
    assert clean.execute("SELECT count(*) FROM procrastinate_workers").fetchone() == (0,)


def test_the_api_answers_through_pgbouncer_in_transaction_mode(pgbouncer, clean, start_api, monkeypatch):
    """SFQ_POOLER=transaction: the API's pool prepares no statement either, so the same queries, asked
    again and again by 8 clients at once on whichever server connection PgBouncer lends, are answered
    every time."""
    url = pgbouncer
    monkeypatch.setenv("SFQ_POOLER", "transaction")
    with httpx.Client(base_url=start_api(url), timeout=30, follow_redirects=True) as client:
        ids = []
        for window in range(300, 306):
            answer = client.post("/train", json={**FAST, "train_window": window})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["model_id"])
        paths = [f"/models/{model_id}" for model_id in ids] + ["/models?limit=20", "/metrics", "/ui"]
        with ThreadPoolExecutor(8) as clients:
            statuses = Counter(clients.map(lambda path: client.get(path).status_code, paths * 10))
    assert statuses == {200: len(paths) * 10}, statuses
