"""Collection rules for a tree whose hot path is compiled in place (``pip install -e .``).

A compiled module's extension is what ``import`` loads, so pytest cannot collect the doctests
of its ``.py`` beside it; ``tests/test_build.py`` runs those from the sources instead (with
``SHADOWROUTE_PURE=1``). A source edited after the last build would be silently shadowed by
its stale extension: the session stops and says how to rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PURE = os.environ.get("SHADOWROUTE_PURE") == "1"


def _extension(source: Path) -> Path | None:
    found = sorted(source.parent.glob(source.stem + ".*.so"))
    return found[0] if found else None


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if not PURE and collection_path.suffix == ".py" and _extension(collection_path):
        return True
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    if PURE:
        return
    src = Path(__file__).parent / "src" / "shadowroute"
    stale = []
    for ext in src.rglob("*.so"):
        source = ext.with_name(ext.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > ext.stat().st_mtime:
            stale.append(str(source.relative_to(src.parent)))
    if stale:
        pytest.exit(
            "compiled modules are older than their sources: "
            + ", ".join(stale)
            + ". Rebuild with `.venv/bin/pip install -e . --no-deps` (or run the sources "
            "with SHADOWROUTE_PURE=1).",
            returncode=4,
        )
