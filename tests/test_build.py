"""The compiled hot path: what setup.py compiles, that it is what runs, and that the same
sources pass as pure Python (their doctests, the proxy's tests and the comparator's)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shadowroute import build_info

ROOT = Path(__file__).resolve().parents[1]
COMPILED = bool(list((ROOT / "src" / "shadowroute").rglob("*.so")))


def setup_py_hot_path() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HOT_PATH":
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError("no HOT_PATH in setup.py")


def test_setup_and_build_info_name_the_same_modules() -> None:
    paths = setup_py_hot_path()
    names = [p.removeprefix("src/").removesuffix(".py").replace("/", ".") for p in paths]
    assert names == list(build_info.HOT_PATH)
    for p in paths:
        assert (ROOT / p).is_file(), p


@pytest.mark.skipif(not COMPILED, reason="a pure-Python install (SHADOWROUTE_COMPILE=0)")
def test_a_compiled_install_runs_every_hot_path_module_compiled() -> None:
    if os.environ.get(build_info.PURE_ENV) == "1":
        assert build_info.compiled_modules() == []
        assert build_info.describe() == "pure Python"
    else:
        assert build_info.compiled_modules() == list(build_info.HOT_PATH)
        assert build_info.describe() == "hot path compiled"


def test_pure_switch_loads_the_sources() -> None:
    code = (
        "from shadowroute import build_info; import shadowroute.dataplane.proxy as p; "
        "print(p.__file__); print(build_info.describe())"
    )
    env = {**os.environ, build_info.PURE_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0].endswith("/shadowroute/dataplane/proxy.py")
    assert out[1] == "pure Python"


@pytest.mark.skipif(not COMPILED, reason="pure Python already runs these in the main session")
def test_the_sources_pass_as_pure_python() -> None:
    """The compiled build is what ships and what the rest of the suite runs; the same code as
    pure Python (``SHADOWROUTE_COMPILE=0`` installs) must behave the same."""
    doctests = [str(ROOT / "src" / m.replace(".", "/")) + ".py" for m in build_info.HOT_PATH]
    env = {**os.environ, build_info.PURE_ENV: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--doctest-modules",
         "tests/test_proxy.py", "tests/test_extraction.py", "tests/test_records.py",
         "tests/test_comparator_engine.py", "tests/test_comparator_fastpath.py",
         "tests/test_stats_confseq.py", "tests/test_stats_paired.py", "tests/test_stats_sketch.py",
         *doctests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
