"""`sfq workers --count N`: N independent `sfq worker i` processes, each restarted if it exits.

A stand-in for `systemctl start worker@{1..N}` on machines without systemd, not a pool: the workers
share nothing but the database.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from workers.daemon.child import die_with_parent

log = logging.getLogger("sfq.workers")

RESTART_DELAY_S = 1.0
QUICK_DEATH_DELAY_S = 5.0  # for a worker that died within a minute of its start


def _spawn(instance: int, extra: list[str]) -> subprocess.Popen:
    # Own process group: a Ctrl-C at the terminal reaches the supervisor only, which forwards it once
    # (a second signal would interrupt the running job).
    return subprocess.Popen(
        [sys.executable, "-m", "queue_app.cli", "worker", str(instance), *extra],
        process_group=0,
        preexec_fn=lambda: die_with_parent(signal.SIGTERM),  # no worker outlives its supervisor
    )


def run(count: int, url: str, extra: list[str], stop_timeout_s: float) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s workers [%(process)d] %(levelname)s %(message)s"
    )
    os.environ["POSTGRES_URL"] = url  # every worker uses the database this supervisor resolved
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    children = {instance: _spawn(instance, extra) for instance in range(1, count + 1)}
    last_start = {instance: time.monotonic() for instance in children}
    restart_at: dict[int, float] = {}  # instance -> when to start it again
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "started %d workers: %s", count, ", ".join(f"worker {i} (pid {c.pid})" for i, c in children.items())
    )
    while not stopping:
        time.sleep(0.2)
        now = time.monotonic()
        for instance, child in children.items():
            if instance in restart_at or child.poll() is None:
                continue
            # Back off when a worker keeps dying young (a bad database URL, say) instead of spinning.
            delay = RESTART_DELAY_S if now - last_start[instance] > 60 else QUICK_DEATH_DELAY_S
            log.warning(
                "worker %d (pid %d) exited with %s; restarting in %.0f s",
                instance,
                child.pid,
                child.returncode,
                delay,
            )
            restart_at[instance] = now + delay
        for instance, when in list(restart_at.items()):
            if when <= now and not stopping:
                del restart_at[instance]
                children[instance], last_start[instance] = _spawn(instance, extra), now
    deadline = time.monotonic() + stop_timeout_s
    for instance, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop within %.0f s; killing it", instance, stop_timeout_s)
            child.kill()
            child.wait()
    log.info("all workers stopped")
    return 0
