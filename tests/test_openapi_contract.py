"""The OpenAPI document against a real ``seats api``: schemathesis generates requests from it
(positive and negative data, fixed seed, bounded examples) and every answer must be documented.

The CLI runs in a subprocess: schemathesis's pytest loader (``from_fixture``) does not run on
pytest 9, and the CLI's summary is the clearest failure report anyway.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Processes

pytestmark = pytest.mark.e2e

CHECKS = ",".join([
    "not_a_server_error",  # no 5xx, whatever the input
    "status_code_conformance",  # every status is documented for its operation
    "content_type_conformance",
    "response_headers_conformance",  # required headers present, documented ones well-formed
    "response_schema_conformance",  # bodies match, including each error code's enum per status
])


def test_every_response_is_documented(processes: Processes, tmp_path: Path) -> None:
    """No generated request gets a 5xx, and every answer's status, headers and body match the document."""
    base = processes.api()
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a test dependency (pip install -e '.[test]')"
    run = subprocess.run(
        [schemathesis, "run", f"{base}/schema/openapi.json", "--checks", CHECKS,
         "--mode", "all", "--max-examples", "30", "--seed", "1", "--workers", "1", "--no-color",
         "--exclude-path-regex", "/events$",  # SSE streams never end; tests/test_events*.py cover them
         "--header", "Authorization: Bearer admin-secret",  # the fixtures' admin token
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,  # its cache dir goes there
    )
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"{summary}\n{run.stderr[-2000:]}\n{processes.output()}"
    assert "passed" in summary and "failure" not in summary.lower(), summary
