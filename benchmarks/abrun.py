"""Run one build of a side-by-side benchmark in a process of its own.

The other build is imported through ``PYTHONPATH`` (a ``pip install --target`` of another
commit); this tree's build runs with whatever ``shadowroute`` the interpreter imports."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def child_json(script: str, args: list[str], site: str | None, timeout: float = 600) -> Any:
    """``script --child ARGS`` under the build at ``site`` (None: this one); the JSON document
    on the last line of its output."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if site:
        env["PYTHONPATH"] = site
    argv = [sys.executable, script, "--child", *args]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every side-by-side benchmark has: ``--base-site``,
    ``--rounds`` and ``--seed`` (the benchmark adds its own, then calls ``parse``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--base-site", help="PYTHONPATH of the build to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--child", nargs="+", type=int, help=argparse.SUPPRESS)
    return p


def parse(p: argparse.ArgumentParser, child: Callable[..., None]) -> argparse.Namespace | None:
    """The options; None when this process is a child (``child`` has run with its
    arguments)."""
    a = p.parse_args()
    if a.child:
        child(*a.child)
        return None
    return a


def sides(base_site: str | None) -> dict[str, str | None]:
    """The builds to run, in the order each round runs them: the base first, when given."""
    return {"this build": None} if not base_site else {"base": base_site, "this build": None}
