"""Whether this install runs the compiled hot path, and how to opt out of it.

An install built with mypyc (the default, see ``setup.py``) has a C extension beside each
hot-path module; Python imports the extension first. ``SHADOWROUTE_PURE=1`` in the
environment makes ``shadowroute`` import the Python sources of those modules instead, for
debugging, profiling in Python, or comparing the two builds. It must be set before
``shadowroute`` is first imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PURE_ENV = "SHADOWROUTE_PURE"
# The modules setup.py compiles (keep the two lists in step; a test checks).
HOT_PATH = (
    "shadowroute.dataplane.http1",
    "shadowroute.dataplane.deadlines",
    "shadowroute.dataplane.turns",
    "shadowroute.dataplane.keepalive",
    "shadowroute.dataplane.upstream",
    "shadowroute.dataplane.mirror",
    "shadowroute.dataplane.planner",
    "shadowroute.dataplane.proxy",
    "shadowroute.dataplane.recorder",
    "shadowroute.dataplane.rewrite",
    "shadowroute.dataplane.stats",
    "shadowroute.stream.queue",
    "shadowroute.core.extraction",
    "shadowroute.core.records",
    "shadowroute.core.sampling",
    "shadowroute.core.request_id",
    "shadowroute.core.drift_fields",
    "shadowroute.core.stats.sketch",
    "shadowroute.core.stats.confseq",
    "shadowroute.core.stats.paired",
    "shadowroute.comparator.reading",
    "shadowroute.comparator.scoring",
    "shadowroute.comparator.classes",
    "shadowroute.comparator.aggregates",
    "shadowroute.comparator.production",
    "shadowroute.comparator.engine",
)


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds a hot-path module's ``.py`` source even when its compiled extension exists."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in HOT_PATH:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        assert spec.origin is not None
        origin = Path(spec.origin)
        source = origin.with_name(origin.name.split(".", 1)[0] + ".py")
        if not source.exists():
            return spec
        return importlib.util.spec_from_file_location(fullname, source)


def install_pure_finder() -> None:
    """Honour ``SHADOWROUTE_PURE=1`` (called by the package on import)."""
    if os.environ.get(PURE_ENV) == "1" and not any(
        isinstance(f, _SourcesFirst) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _SourcesFirst())


def compiled_modules() -> list[str]:
    """The hot-path modules that run compiled in this process."""
    out = []
    for name in HOT_PATH:
        module = sys.modules.get(name) or importlib.import_module(name)
        if not (module.__file__ or "").endswith(".py"):
            out.append(name)
    return out


def describe() -> str:
    """One line for ``--version`` and the start-up log."""
    n = len(compiled_modules())
    if n == len(HOT_PATH):
        return "hot path compiled"
    if n == 0:
        return "pure Python"
    return f"hot path partly compiled ({n}/{len(HOT_PATH)} modules)"
