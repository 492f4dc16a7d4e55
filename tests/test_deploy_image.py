"""deploy/Dockerfile, checked by reading it (no container engine runs here or in CI).

The image is linted, not built: these tests parse the Dockerfile and hold it to the rules the
deployment relies on (non-root numeric user, multi-stage, no remote ADD, entrypoint and
paths that the CLI and the Helm chart agree on).
"""

from __future__ import annotations

import glob
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CHART = ROOT / "helm" / "shadowroute"
BASE_IMAGE = "python:3.11-slim"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, tagged by stage."""
    out: list[Instruction] = []
    stage, buf, start = -1, "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip(), start))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def helper_value(name: str) -> str:
    """A constant defined in the chart's _helpers.tpl, e.g. shadowroute.configPath."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    m = re.search(r'define "' + re.escape(name) + r'" -\}\}(.*?)\{\{- end', text)
    assert m, f"{name} not defined in _helpers.tpl"
    return m.group(1).strip()


def cli(*args: str) -> str:
    exe = Path(sys.executable).with_name("shadowroute")
    res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, got {len(found)}"
    return found[0]


def test_parser_joins_continuations_and_tracks_stages() -> None:
    text = "# c\nFROM a AS b\nRUN x \\\n  && y\n\nFROM c\nUSER 5\n"
    got = parse_dockerfile(text)
    assert [(i.stage, i.keyword, i.args) for i in got] == [
        (0, "FROM", "a AS b"),
        (0, "RUN", "x  && y"),
        (1, "FROM", "c"),
        (1, "USER", "5"),
    ]


def test_multi_stage_on_the_slim_base(instructions: list[Instruction]) -> None:
    froms = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "build and runtime stages expected"
    assert all(f[0] == BASE_IMAGE for f in froms), froms
    stage_names = {f[2] for f in froms if len(f) == 3 and f[1].upper() == "AS"}
    copies_from = [
        m.group(1) for i in final(instructions) if (m := re.match(r"--from=(\S+)", i.args))
    ]
    assert copies_from, "the runtime stage must copy the built venv from an earlier stage"
    assert set(copies_from) <= stage_names


def test_runs_as_numeric_non_root_user(instructions: list[Instruction]) -> None:
    users = [i for i in instructions if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    last = users[-1]
    assert last.stage == max(i.stage for i in instructions)
    uid, _, gid = last.args.partition(":")
    assert uid.isdigit() and int(uid) == 10001, last.args
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after USER switches back.
    later = [i for i in final(instructions) if i.line > last.line and i.keyword == "USER"]
    assert not later


def test_no_remote_add_and_copy_sources_exist(instructions: list[Instruction]) -> None:
    for i in instructions:
        if i.keyword == "ADD":
            assert not re.search(r"\b(https?|git)://|git@", i.args), f"line {i.line}: ADD of URL"
        if i.keyword in ("COPY", "ADD") and "--from=" not in i.args:
            parts = [p for p in i.args.split() if not p.startswith("--")]
            for src in parts[:-1]:
                assert glob.glob(str(ROOT / src)), f"line {i.line}: {src} not in the repository"


def test_entrypoint_is_the_installed_console_script(instructions: list[Instruction]) -> None:
    entry = exec_form(only(final(instructions), "ENTRYPOINT").args)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["shadowroute"] and "shadowroute" in scripts
    assert "usage: shadowroute" in cli("--help")


def test_cmd_is_a_valid_serve_invocation_on_the_charts_config_path(
    instructions: list[Instruction],
) -> None:
    cmd = exec_form(only(final(instructions), "CMD").args)
    top = cli("--help")
    assert re.search(rf"\b{cmd[0]}\b", top), f"'{cmd[0]}' is not a shadowroute command"
    serve_help = cli(cmd[0], "--help")
    flags = [a for a in cmd[1:] if a.startswith("-")]
    for flag in flags:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", serve_help), f"{flag} not accepted"
    config_path = cmd[cmd.index("-c") + 1]
    assert config_path == helper_value("shadowroute.configPath")
    assert config_path.startswith(helper_value("shadowroute.configDir") + "/")
    # The parser itself accepts the exact argument vector.
    from shadowroute.cli import build_parser

    assert build_parser().parse_args(cmd).config == config_path


def test_writable_paths_are_the_volumes_the_chart_mounts(instructions: list[Instruction]) -> None:
    vol = exec_form(only(final(instructions), "VOLUME").args)
    data_dir = helper_value("shadowroute.dataDir")
    assert sorted(vol) == sorted([data_dir, "/tmp"])
    # Bytecode is never written at run time (read-only root filesystem).
    env = " ".join(i.args for i in final(instructions) if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    workdir = only(final(instructions), "WORKDIR").args
    assert workdir == data_dir


def test_exposed_ports_match_the_chart_defaults(instructions: list[Instruction]) -> None:
    exposed = {int(p.split("/")[0]) for p in only(final(instructions), "EXPOSE").args.split()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert exposed == {values["ports"]["listen"], values["ports"]["admin"]}


def test_build_context_filter_keeps_what_the_build_copies() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert "**" in ignore
    for needed in ("!pyproject.toml", "!setup.py", "!README.md", "!LICENSE", "!src/**"):
        assert needed in ignore
    # Extensions built in place by an editable install are rebuilt in the image, never copied.
    assert "**/*.so" in ignore
    copied = [
        src
        for ins in parse_dockerfile(DOCKERFILE.read_text())
        if ins.keyword == "COPY" and not ins.args.startswith("--from")
        for src in ins.args.split()[:-1]
    ]
    assert copied
    for src in copied:
        assert f"!{src}" in ignore or f"!{src}/**" in ignore, src
