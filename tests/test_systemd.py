"""The systemd units (systemd/), checked without systemd as PID 1: `systemd-analyze verify` and
`security` on the unit files, and each service's ExecStart run the way systemd would run it, with the
notify socket systemd would listen on."""

from __future__ import annotations

import array
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, insert_request, wait_for_models
from workers.daemon import notify
from workers.daemon.child import die_with_parent

UNITS = ROOT / "systemd"
INSTALLED_SFQ = "/opt/sfq/bin/sfq"  # where scripts/install-systemd puts sfq, and the units run it
ENV_FILE = "/etc/sfq/sfq.env"
SFQ = Path(sys.executable).parent / "sfq"  # this checkout's, standing in for INSTALLED_SFQ
SERVICES = ("worker@1.service", "queue-api.service")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what systemd gives a service
CONFIG_DEFAULT = re.compile(r'_(?:int|bool)\("(SFQ_\w+)", (\w+)\)')  # in queue_app/config.py


def directives(unit: str) -> dict[str, str]:
    """A unit file's settings, the last assignment winning (drop-ins are not read here)."""
    template = re.sub(r"@[^.]+\.", "@.", unit)
    settings = {}
    for line in (UNITS / template).read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", ";", "[")):
            settings[key.strip()] = value.strip()
    return settings


def seconds(span: str) -> int:
    """A systemd time span as written in these units: "120s", "2min" or a bare number of seconds."""
    number, unit = re.fullmatch(r"(\d+)\s*(s|min)?", span).groups()
    return int(number) * (60 if unit == "min" else 1)


def env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it: KEY=value lines, comments, optional quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            env[key.strip()] = value
    return env


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.geteuid() != 0:
            pytest.skip("systemd-analyze is missing (Debian's systemd package; .ci/run installs it as root)")
        pytest.fail("systemd-analyze is missing: .ci/run should have installed Debian's systemd package")
    return path


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    """A copy of systemd/ whose ExecStart runs this checkout's sfq: `verify` checks that the binary
    exists, and /opt/sfq is only there after scripts/install-systemd. Nothing else is changed."""
    copy = tmp_path / "units"
    shutil.copytree(UNITS, copy)
    for unit in copy.glob("*.service"):
        unit.write_text(unit.read_text().replace(INSTALLED_SFQ, str(SFQ)))
    return copy


def test_units_verify_cleanly(systemd_analyze, unit_dir):
    # worker@1 with the CPU-pinning drop-in (worker@.service.d/), which verify reads from the same folder.
    result = subprocess.run(
        [systemd_analyze, "verify", "--recursive-errors=yes", "--man=no", *SERVICES, "workers.target"],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("unit", SERVICES)
def test_services_are_hardened(systemd_analyze, unit_dir, unit):
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=true", str(unit_dir / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout
    assert float(exposure.group(1)) <= 2.0, result.stdout


def test_units_are_wired_to_workers_target_and_the_installed_paths():
    config = dict(CONFIG_DEFAULT.findall((ROOT / "queue_app" / "config.py").read_text()))
    for unit in SERVICES:
        settings = directives(unit)
        assert settings["PartOf"] == settings["WantedBy"] == "workers.target"
        assert settings["EnvironmentFile"] == ENV_FILE
        assert shlex.split(settings["ExecStart"])[0] == INSTALLED_SFQ
        assert settings["User"] == "sfq"
    worker = directives("worker@1.service")
    assert (worker["Type"], worker["KillMode"], worker["Restart"]) == ("notify", "mixed", "on-failure")
    # As long as `sfq workers` waits (workers/daemon/commands.py): the grace period plus the result-write
    # retries.
    assert seconds(worker["TimeoutStopSec"]) >= int(config["SFQ_GRACE_S"]) + 90


def test_env_example_lists_every_setting_with_its_default():
    example = (UNITS / "sfq.env.example").read_text()
    config = (ROOT / "queue_app" / "config.py").read_text()
    for name, default in CONFIG_DEFAULT.findall(config):
        assert f"\n#{name}={default.lower()}\n" in example, name
    for name in re.findall(r'"(SFQ_\w+)"', config):
        assert f"\n#{name}=" in example, name
    assert "\nPOSTGRES_URL=" in example


def test_install_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "install-systemd")], check=True)


class NotifySocket:
    """What systemd listens on for a Type=notify service: each datagram, when it came and from which
    pid (systemd's NotifyAccess=main accepts only the main process's), read as it comes."""

    def __init__(self):
        self.address = f"@sfq-test-{secrets.token_hex(8)}"  # abstract namespace, as systemd's own
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[tuple[float, int, list[str]]] = []  # (when, sender pid, fields)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
                if not data:  # shut down
                    return
                (pid,) = (
                    array.array("i", cmsg[2])[0]  # struct ucred: pid, uid, gid
                    for cmsg in ancillary
                    if cmsg[:2] == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
                )
                self.received.append((time.monotonic(), pid, data.decode().split("\n")))

    def wait_for(self, prefix: str, timeout: float, process: subprocess.Popen, after: int = 0) -> int:
        """Wait for a field starting with `prefix` in a datagram from the `after`-th on; returns the
        index of that datagram."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(after, len(self.received)):
                if any(field.startswith(prefix) for field in self.received[index][2]):
                    return index
            if process.poll() is not None:  # what it sent before it exited may still be on its way
                deadline = min(deadline, time.monotonic() + 1)
            time.sleep(0.05)
        raise AssertionError(f"no {prefix} (exit status {process.poll()}); received {self.received}")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)


def start_service(unit: str, database: str, tmp_path: Path, replace: dict[str, str], **env: str):
    """Start a unit's ExecStart as systemd would: %i expanded, the EnvironmentFile (the shipped example
    with the test database's POSTGRES_URL) as its environment, from /. Not reproduced: the user sfq
    and the sandbox, which need systemd itself."""
    instance = unit.partition("@")[2].partition(".")[0]
    settings = directives(unit)
    argv = [replace.get(word, word) for word in shlex.split(settings["ExecStart"].replace("%i", instance))]
    assert argv[0] == INSTALLED_SFQ
    example = (UNITS / "sfq.env.example").read_text()
    env_path = tmp_path / "sfq.env"
    env_path.write_text(re.sub(r"(?m)^POSTGRES_URL=.*$", f'POSTGRES_URL="{database}"', example))
    environment = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", **env_file(env_path), **env}
    log = tmp_path / f"{unit}.log"
    # systemd sets WATCHDOG_PID to the main process's pid; `exec` keeps the shell's.
    command = ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", str(SFQ), *argv[1:]]
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            env=environment,
            cwd="/",
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
        )
    return process, settings, log


def stop_service(process: subprocess.Popen, settings: dict[str, str], log: Path) -> int:
    """SIGTERM (KillSignal=); returns the exit status, which must come within TimeoutStopSec=."""
    assert settings["KillSignal"] == "SIGTERM"
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(seconds(settings["TimeoutStopSec"]))
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"not stopped within TimeoutStopSec:\n{log.read_text()}") from None


def test_worker_service_notifies_systemd(database, clean, tmp_path):
    unit = "worker@1.service"
    watchdog_s = 1.0  # the unit's WatchdogSec= is 30 s: pings every 10 s, too slow for a test
    receiver = NotifySocket()
    process, settings, log = start_service(
        unit,
        database,
        tmp_path,
        {},
        NOTIFY_SOCKET=receiver.address,
        WATCHDOG_USEC=str(int(watchdog_s * 1e6)),
    )
    try:
        ready = receiver.wait_for("READY=1", 60, process)
        assert "worker 1 ready" in log.read_text()
        model_id, _, _ = insert_request(clean, {"symbol": "AAPL", "algorithm": "Ridge", "train_window": 300})
        training = receiver.wait_for(f"STATUS=training model {model_id} (job", 60, process, after=ready)
        assert wait_for_models(clean, [model_id])[model_id]["status"] == "completed"
        receiver.wait_for("STATUS=idle", 10, process, after=training)
        # At least six watchdog pings since READY (asserted below): waited for, not slept for 3 s.
        deadline = time.monotonic() + 60
        while sum(fields == ["WATCHDOG=1"] for _, _, fields in receiver.received[ready:]) < 6:
            assert time.monotonic() < deadline and process.poll() is None, receiver.received
            time.sleep(0.05)
        assert stop_service(process, settings, log) == 0, log.read_text()
        receiver.wait_for("STOPPING=1", 1, process)
    finally:
        if process.poll() is None:
            process.kill()
        receiver.close()
    assert {pid for _, pid, _ in receiver.received} == {process.pid}  # NotifyAccess=main
    pings = [when for when, _, fields in receiver.received[ready:] if fields == ["WATCHDOG=1"]]
    gaps = sorted(later - earlier for earlier, later in zip(pings, pings[1:], strict=False))
    assert len(pings) >= 6 and gaps[-1] < watchdog_s, gaps  # one gap of watchdog_s: systemd kills
    assert gaps[len(gaps) // 2] < watchdog_s / 2, gaps  # pinged at less than half of it


def test_api_service_answers_and_stops(database, tmp_path):
    unit = "queue-api.service"
    # The unit's port, 8000, may be taken on a developer's machine: the test serves on a free one.
    port = free_port()
    process, settings, log = start_service(unit, database, tmp_path, {"8000": str(port)})
    assert settings["Type"] == "exec"  # started once running: nothing to notify
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        code = stop_service(process, settings, log)
    finally:
        if process.poll() is None:
            process.kill()
    # uvicorn shuts down, then raises the SIGTERM it caught again: a clean stop for systemd, which
    # counts SIGTERM as success (SuccessExitStatus=) like exit code 0.
    assert code in (0, -signal.SIGTERM) and "Finished server process" in log.read_text(), log.read_text()


def test_notify_sends_to_a_path_and_is_a_no_op_without_systemd(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.notify("READY=1", "STATUS=idle")
        assert sock.recv(4096) == b"READY=1\nSTATUS=idle"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify.notify("READY=1")


def test_watchdog_period_is_a_third_of_systemds_and_only_for_its_process(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_period() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_period() == 10
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert notify.watchdog_period() is None
