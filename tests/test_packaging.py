"""A non-editable install carries the Lua scripts and the UI (README's `pip install .`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_ships_lua_scripts_and_static_files(tmp_path: Path) -> None:
    """The built wheel contains every lua/*.lua file, the UI's static files and the `seats` entry point."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, timeout=300,
    )
    wheel = next(tmp_path.glob("seats-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in (REPO / "lua").glob("*.lua"):
        assert f"lua/{script.name}" in names, f"{script.name} missing from the wheel"
    static = [p for p in (REPO / "service" / "static").rglob("*") if p.is_file()]
    assert static, "the UI has static files"
    for path in static:
        assert path.relative_to(REPO).as_posix() in names, f"{path} missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "seats = service.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
