"""`seats dev` as a user runs it, for the end-to-end tests of the one-command start (plain and ``--cluster``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from tests.conftest import REPO


class SeatsDev:
    """One ``seats dev [args]`` process on ``port``, its output (stdout and stderr) kept line by line.

    ``keep_env`` picks which of this process's variables it inherits; ``env`` adds to them (a test
    marker found later in /proc, a TMPDIR, a PATH)."""

    def __init__(self, port: int, args: list[str], env: dict[str, str],
                 keep_env: Callable[[str], bool] = lambda name: name != "SEATS_REDIS_URL") -> None:
        self.port = port
        full_env = {name: value for name, value in os.environ.items() if keep_env(name)}
        full_env.update(SEATS_PORT=str(port), PYTHONUNBUFFERED="1", **env)
        self.process = subprocess.Popen([sys.executable, "-m", "service.cli", "dev", *args], env=full_env, cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    def wait_for_url(self, timeout: float) -> str:
        """The URL of the line `seats is running: open <url>` (as printed, with its trailing ``/``).

        Raises AssertionError with everything printed so far when it exits or takes longer than ``timeout`` s."""
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            self.lines.append(line)
            if "seats is running" in line:
                return line.split("open ", 1)[1].split()[0]
        raise AssertionError("seats dev never printed its URL:\n" + "".join(self.lines))

    def ports(self, label: str) -> list[int]:
        """The ports of the URLs on the printed line starting with ``label`` (e.g. ``private Redis at``)."""
        line = next(line for line in self.lines if line.startswith(label))
        urls = line.split(" at ", 1)[1].split()[0]
        return [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls.split(",")]

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C (SIGINT), wait for the exit, keep what it printed last; the exit code."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        assert self.process.stdout is not None
        self.lines.extend(self.process.stdout.readlines())
        return code


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
