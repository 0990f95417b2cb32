"""sd_notify without libsystemd: tell systemd (Type=notify) that a worker is ready, alive or stopping.

The protocol is one datagram of "KEY=value" lines to the unix socket named by $NOTIFY_SOCKET ('@' for
Linux's abstract namespace). Without systemd the variable is unset and every call is a no-op, so
`sfq worker` behaves the same from a shell, `sfq workers` or the tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("sfq.notify")


def notify(*fields: str) -> bool:
    """Send fields such as "READY=1" and "STATUS=idle"; False when there is no systemd to tell."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):  # unset, or a vsock address (virtual machines): not for us
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as error:  # systemd gone or restarting: never a reason for a worker to fail
        log.warning("could not notify systemd (%s): %s", ", ".join(fields), error)
        return False
    return True


def status(text: str) -> bool:
    """A one-line state for `systemctl status`."""
    return notify(f"STATUS={text}")


def watchdog_period() -> float | None:
    """Seconds between WATCHDOG=1 pings: a third of WATCHDOG_USEC (systemd asks for less than half),
    or None without a watchdog, or when the watchdog is another process's (WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 3e6


async def watchdog_forever() -> None:
    """Ping systemd's watchdog from the event loop: if the loop hangs, the pings stop and systemd
    kills and restarts the worker (WatchdogSec=, Restart=on-failure)."""
    period = watchdog_period()
    if period is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)
