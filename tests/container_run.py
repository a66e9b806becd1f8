"""Run a container's processes on a private loopback and probe them: the engine-less image check's runtime half.

``tests/test_image_build.py`` runs this file as ``unshare --net --fork --kill-child python container_run.py
SPEC.json``: in a fresh network namespace, 127.0.0.1 is this run's alone, so the image's own ports
(8080, Redis on 6379, the worker's 9101) are used as the image and compose.yaml give them. Standard
library only: it runs with whatever interpreter the test uses, outside pytest.

SPEC: ``{"start": [{"name", "argv", "env", "cwd", "ready": CHECK | null, "completes": seconds}], "checks":
[CHECK]}`` (``completes``: a one-shot job, such as compose's ``service_completed_successfully``: waited for
before the next is started, and reported as the check ``"<name> completed"``, ok when it exited 0) where
CHECK = ``{"name", "argv", "env", "cwd", "seconds", "every"}``: the command must exit 0 at least once
within ``seconds`` (tried every ``every`` s), as Docker's HEALTHCHECK retries until its start period
and retries run out. Prints ``{"checks": {name: {"ok", "output"}}, "exited": {name: returncode|null},
"logs": {name: tail}}`` as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def probe(check: dict[str, Any]) -> dict[str, Any]:
    """Run ``check`` until it exits 0 or its time is up."""
    deadline = time.monotonic() + float(check["seconds"])
    output = ""
    while True:
        try:
            done = subprocess.run(check["argv"], env=check["env"], cwd=check.get("cwd"), capture_output=True,
                                  text=True, timeout=10, check=False)
            output = (done.stdout + done.stderr)[-2000:]
            if done.returncode == 0:
                return {"ok": True, "output": output}
        except subprocess.TimeoutExpired:
            output = "timed out after 10 s"
        if time.monotonic() > deadline:
            return {"ok": False, "output": output}
        time.sleep(float(check.get("every", 0.5)))


def main(spec_path: str) -> None:
    """Start, probe, report, stop everything."""
    spec = json.loads(Path(spec_path).read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    report: dict[str, Any] = {"checks": {}, "exited": {}, "logs": {}}
    try:
        for service in spec["start"]:
            log = Path(tempfile.mkstemp(prefix=f"container-{service['name']}-", suffix=".log")[1])
            with log.open("wb") as handle:
                process = subprocess.Popen(service["argv"], env=service["env"], cwd=service["cwd"], stdout=handle,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            started.append((service["name"], process, log))
            if service.get("completes"):
                try:
                    code: int | None = process.wait(float(service["completes"]))
                except subprocess.TimeoutExpired:
                    code = None
                report["checks"][f"{service['name']} completed"] = {
                    "ok": code == 0, "output": f"exit {code}: " + log.read_text(errors="replace")[-2000:]}
            if service.get("ready"):
                report["checks"][service["ready"]["name"]] = probe(service["ready"])
        for check in spec["checks"]:
            report["checks"][check["name"]] = probe(check)
        for name, process, _ in started:
            report["exited"][name] = process.poll()
    finally:
        for _, process, _ in reversed(started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process, log in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            report["logs"][name] = log.read_text(errors="replace")[-3000:]
            log.unlink()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
