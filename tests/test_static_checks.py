"""The code stays typed and linted: mypy --strict and ruff are part of the test command."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mypy_strict_is_clean() -> None:
    """`mypy --strict` (configured in pyproject.toml) finds nothing in service/ and worker/."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    """`ruff check` finds nothing in the code, the worker, the harness and the tests."""
    result = _run("ruff", "check", "service", "worker", "loadtest", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
