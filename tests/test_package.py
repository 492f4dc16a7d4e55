"""The install story: ``python -m build`` makes an sdist and a wheel from the tree (the wheel
from the sdist, as an index would), they hold what they should, and the wheel installed into a
fresh virtual environment gives a working ``shadowroute``.

The build here is pure Python (``SHADOWROUTE_COMPILE=0``), to keep the test short: the
compiled build is the same package plus the mypyc extensions, and ``test_build.py`` checks
those in the development install. Dependencies come from the package index (pip's cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "shadowroute"

pytestmark = pytest.mark.slow


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _package_files() -> set[str]:
    """Every file of the package in the tree, relative to ``src/`` (sources, schemas, static
    files, py.typed), without build products."""
    return {
        str(p.relative_to(ROOT / "src"))
        for p in PKG.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc")
    }


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHADOWROUTE_PURE")}
    env["SHADOWROUTE_COMPILE"] = "0"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # From another directory: the tree's own build/ would shadow the `build` module.
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    return out


def test_the_sdist_holds_what_a_build_needs(dist: Path) -> None:
    top = f"shadowroute-{_version()}"
    with tarfile.open(dist / f"{top}.tar.gz") as tar:
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    for f in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "PKG-INFO"):
        assert f in names, f
    missing = {f"src/{f}" for f in _package_files()} - names
    assert not missing, sorted(missing)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith("tests/")]


def test_the_wheel_holds_the_package_its_files_and_no_build_products(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"shadowroute-{_version()}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"shadowroute-{_version()}.dist-info"
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = zf.read(f"{info}/METADATA").decode()
        tag = zf.read(f"{info}/WHEEL").decode()
    missing = _package_files() - names
    assert not missing, sorted(missing)
    for f in ("static/index.html", "static/app.js", "schemas/pair.v1.json", "py.typed"):
        assert f"shadowroute/{f}" in names
    # Pure, as asked: no extension module, and a wheel for any platform.
    assert not [n for n in names if n.endswith((".so", ".pyd")) or "mypyc" in n]
    assert "Tag: py3-none-any" in tag and "Root-Is-Purelib: true" in tag
    assert "shadowroute = shadowroute.cli:main" in entry_points
    assert "Provides-Extra: demo" in metadata and "Requires-Dist: aiohttp" in metadata


def test_the_wheel_installs_into_a_fresh_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)
    cli = str(venv / "bin" / "shadowroute")
    assert "config" in _run([cli, "--help"], cwd=tmp_path).stdout
    assert _run([cli, "--version"], cwd=tmp_path).stdout.strip() == (
        f"shadowroute {_version()} (pure Python)"
    )
    check = _run([cli, "config", "check", str(ROOT / "examples" / "minimal.yaml")], cwd=tmp_path)
    assert "minimal.yaml: OK (1 route(s), 1 candidate(s), transport embedded)" in check.stdout
    where = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import shadowroute, importlib.resources as r; print(shadowroute.__file__); "
            "print(r.files('shadowroute').joinpath('static/index.html').is_file())",
        ],
        cwd=tmp_path,
    ).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "True", where
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{name: r, production: {name: p, url: 'http://h:99999'}}]\n")
    out = subprocess.run(
        [cli, "config", "check", str(bad)], cwd=tmp_path, env=_env(), capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1 and "routes[0].production.url: the port must be" in out.stderr
