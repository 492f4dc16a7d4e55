"""The layer map (ARCHITECTURE.md, "Layers") is checked, not only written down: the
import-linter contract in pyproject.toml holds for the package, and an upward import breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers(tmp_path: Path) -> None:
    out = lint(ROOT / "src", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """core importing the data plane (an upward import), or an event loop, is caught."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "shadowroute",
        src / "shadowroute",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", "static"),
    )
    sampling = src / "shadowroute" / "core" / "sampling.py"
    sampling.write_text(sampling.read_text() + "\nfrom shadowroute.dataplane import http1\n")
    records = src / "shadowroute" / "core" / "records.py"
    records.write_text(records.read_text() + "\nimport asyncio\n")
    out = lint(src, tmp_path)
    assert out.returncode != 0
    assert "0 kept, 2 broken" in out.stdout
    assert "shadowroute.core.sampling -> shadowroute.dataplane.http1" in out.stdout
    assert "shadowroute.core.records -> asyncio" in out.stdout


PROCESS_WIRING = ("add_signal_handler", "signal.signal(", "web.AppRunner(", "web.TCPSite(")
"""What assembles a process: signal handlers and the admin server."""

OUTSIDE_RUNTIME = {("demo/server.py", "web.AppRunner("), ("demo/server.py", "web.TCPSite(")}
"""The demo's stand-in model servers: models the demo runs, not processes of shadowroute."""


def test_only_runtime_starts_servers_and_installs_signal_handlers() -> None:
    """Processes are assembled in one package: outside ``runtime`` no module installs a signal
    handler or starts the admin server (the data plane serves on the socket it is given)."""
    pkg = ROOT / "src" / "shadowroute"
    found = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        if rel.startswith("runtime/"):
            continue
        text = path.read_text(encoding="utf-8")
        found += [(rel, what) for what in PROCESS_WIRING if what in text]
    assert set(found) <= OUTSIDE_RUNTIME, sorted(set(found) - OUTSIDE_RUNTIME)
    assert (pkg / "runtime" / "lifecycle.py").read_text().count("add_signal_handler") == 5


FILE_IO = {"read_text", "read_bytes", "write_text", "write_bytes", "getenv", "environ"}
"""Attributes whose use in ``core`` would be file or environment I/O (``os.environ``,
``Path.read_text``...), besides calling ``open``."""


def test_core_reads_no_files_and_no_environment() -> None:
    """``core`` validates what it is given: the config file, ``os.environ`` and secret files
    are read by ``shadowroute.configfile``, reference files next to the comparator."""
    import ast

    found = []
    for path in sorted((ROOT / "src" / "shadowroute" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            io = (isinstance(node, ast.Attribute) and node.attr in FILE_IO) or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "open"
            )
            if io:
                found.append(f"{path.name}:{node.lineno}")
    assert found == []
