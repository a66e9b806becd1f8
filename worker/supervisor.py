"""``seats worker``: keeps one arq worker process alive across Redis restarts.

arq 0.28's worker exits (rc=1) when Redis goes away and never comes back by itself, so the
supervisor restarts it with a capped backoff and forwards SIGTERM/SIGINT for a clean stop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

from service.logs import configure_logging
from service.settings import load_settings

log = logging.getLogger("seats.worker")

MAX_BACKOFF_SECONDS = 5.0


def supervise(command: list[str] | None = None) -> int:
    """Run the worker, restarting it on failure, until told to stop; returns the exit code."""
    command = command or [sys.executable, "-m", "worker.main"]
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 0.5
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        if stopping:
            return 0
        if time.monotonic() - started > 30:
            backoff = 0.5
        log.warning("worker exited with %s; restarting in %.1f s", code, backoff)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if stopping:
            return 0
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def main() -> None:
    """Entry point of ``seats worker``: settings are checked before any child starts (a setting the
    worker cannot take must stop it, not make it restart forever: SettingsError reaches ``seats``)."""
    configure_logging()
    load_settings()
    sys.exit(supervise())
