"""Build hook: the hot paths are compiled to C with mypyc.

The modules below carry every client request (parsing, forwarding, mirroring, pairing,
record encoding) and every record the comparator consumes (decoding, joining, scoring,
aggregating, the pending store). They are ordinary typed Python; mypyc compiles them to C
extensions, which roughly halves the data plane's CPU per request and takes about a tenth off
the comparator's per labelled pair (``benchmarks/README.md``). ``SHADOWROUTE_COMPILE=0``
builds a pure-Python install instead (same behaviour, slower data plane).

The compile type-checks with mypy's defaults, not the project's strict configuration (that
runs in CI on the sources): imports the build environment lacks are treated as ``Any``.
"""

from __future__ import annotations

import os

from setuptools import setup

HOT_PATH = [
    "src/shadowroute/dataplane/http1.py",
    "src/shadowroute/dataplane/deadlines.py",
    "src/shadowroute/dataplane/turns.py",
    "src/shadowroute/dataplane/keepalive.py",
    "src/shadowroute/dataplane/upstream.py",
    "src/shadowroute/dataplane/mirror.py",
    "src/shadowroute/dataplane/planner.py",
    "src/shadowroute/dataplane/proxy.py",
    "src/shadowroute/dataplane/recorder.py",
    "src/shadowroute/dataplane/rewrite.py",
    "src/shadowroute/dataplane/stats.py",
    "src/shadowroute/stream/queue.py",
    "src/shadowroute/core/extraction.py",
    "src/shadowroute/core/records.py",
    "src/shadowroute/core/sampling.py",
    "src/shadowroute/core/request_id.py",
    "src/shadowroute/core/drift_fields.py",
    "src/shadowroute/core/stats/sketch.py",
    "src/shadowroute/core/stats/confseq.py",
    "src/shadowroute/core/stats/paired.py",
    "src/shadowroute/comparator/reading.py",
    "src/shadowroute/comparator/scoring.py",
    "src/shadowroute/comparator/classes.py",
    "src/shadowroute/comparator/aggregates.py",
    "src/shadowroute/comparator/production.py",
    "src/shadowroute/comparator/engine.py",
]


def ext_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("SHADOWROUTE_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    return mypycify(
        ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent", *HOT_PATH],
        opt_level="3",
        group_name="shadowroute_native",
    )


setup(ext_modules=ext_modules())
