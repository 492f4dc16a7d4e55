"""Config validation: every error names its field path and what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowroute.configfile import load_config
from shadowroute.core.config import ConfigError, parse_config

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))


def minimal() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLES[[p.name for p in EXAMPLES].index("minimal.yaml")].read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    # Examples that listen beyond loopback take their admin token from the environment.
    cfg = load_config(path, environ={"SHADOWROUTE_API_TOKEN": "example-token"})
    assert cfg.routes


def test_minimal_config_defaults() -> None:
    cfg = parse_config(minimal(), environ={})
    r = cfg.routes[0]
    assert (cfg.listen.port, cfg.admin.port, cfg.transport.kind) == (8080, 9090, "embedded")
    assert r.candidates[0].fraction == 0.5
    assert r.policy.mode == "superiority" and r.policy.alpha == 0.05
    assert cfg.proxy.request_id_header == "x-request-id"
    assert r.mirror_methods == ["POST"]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    node: Any = doc
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "routes.0.candidates.0.fraction",
            1.5,
            "routes[0].candidates[0].fraction: Input should be less than or equal to 1",
        ),
        (
            "routes.0.candidates.0.url",
            "ftp://x",
            "routes[0].candidates[0].url: must be an http:// or https:// URL",
        ),
        (
            "routes.0.production.timeout_s",
            -1,
            "routes[0].production.timeout_s: Input should be greater than 0",
        ),
        ("routes.0.protocol", "grpc", "routes[0].protocol: Input should be 'openinference'"),
        ("routes.0.task", "ranking", "routes[0].task: Input should be 'classification'"),
        ("routes.0.colour", "blue", "routes[0].colour: unknown key"),
        ("listen.port", 70000, "listen.port: Input should be less than or equal to 65535"),
        ("transport", {"kind": "kafka"}, "transport: kind 'kafka' needs 'bootstrap'"),
        ("routes.0.path_prefix", "api", "routes[0]: path_prefix must start with '/'"),
        (
            "routes.0.candidates.0.name",
            "fraud-v7",
            "routes[0]: model names must be unique within a route",
        ),
        (
            "routes.0.policy",
            {"mode": "non_inferiority"},
            "routes[0].policy: mode 'non_inferiority' needs margin > 0",
        ),
        ("routes.0.candidates.0.headers", {"Connection": "close"}, "hop-by-hop"),
        ("routes", [], "routes: List should have at least 1 item"),
        ("routes.0.name", "bad name!", "routes[0].name: String should match pattern"),
    ],
)
def test_each_invalid_config_names_its_field(path: str, value: Any, expected: str) -> None:
    doc = minimal()
    _set(doc, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={})
    assert expected in str(info.value), str(info.value)


def test_several_errors_are_all_reported() -> None:
    doc = minimal()
    doc["routes"][0]["candidates"][0]["fraction"] = 2
    doc["admin"]["prot"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ={})
    assert len(info.value.problems) == 2


def test_environment_overrides_addresses_and_secrets() -> None:
    env = {
        "SHADOWROUTE_LISTEN_PORT": "8181",
        "SHADOWROUTE_API_TOKEN": "t0ken",
        "SHADOWROUTE_ROUTE_FRAUD_PRODUCTION_URL": "http://prod.svc:80",
        "SHADOWROUTE_ROUTE_FRAUD_FRAUD_V8_URL": "http://cand.svc:80",
    }
    cfg = parse_config(minimal(), environ=env)
    assert cfg.listen.port == 8181
    assert cfg.admin.token is not None and cfg.admin.token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(cfg)  # secrets never print
    assert cfg.routes[0].production.url == "http://prod.svc:80"
    assert cfg.routes[0].candidates[0].url == "http://cand.svc:80"
    with pytest.raises(ConfigError, match=r"listen\.port"):
        parse_config(minimal(), environ={"SHADOWROUTE_LISTEN_PORT": "eighty"})


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n  - name: x\n    path_prefix: /\n  bad: : :\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)


def test_config_check_cli(tmp_path: Path) -> None:
    doc = minimal()
    doc["routes"][0]["candidates"][0]["fraction"] = -0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "shadowroute", "config", "check"]
    out = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert (
        "routes[0].candidates[0].fraction: Input should be greater than or equal to 0" in out.stderr
    )
    example = EXAMPLES[[p.name for p in EXAMPLES].index("minimal.yaml")]
    good = subprocess.run([*cmd, str(example)], capture_output=True, text=True, check=False)
    assert good.returncode == 0 and "OK" in good.stdout


def test_config_reference_doc_is_current() -> None:
    from shadowroute.core.config_doc import reference

    doc = Path(__file__).parent.parent / "docs" / "config.md"
    assert doc.read_text() == reference(), (
        "docs/config.md is stale: run `shadowroute config reference > docs/config.md`"
    )


def test_json_log_lines() -> None:
    import logging

    import orjson

    from shadowroute.cli import JsonFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        import sys as _sys

        rec = logging.LogRecord(
            "shadowroute.proxy", logging.WARNING, __file__, 1, "refused %s", ("x",), _sys.exc_info()
        )
    doc = orjson.loads(JsonFormatter().format(rec))
    assert doc["level"] == "warning" and doc["logger"] == "shadowroute.proxy"
    assert doc["msg"] == "refused x" and "ValueError: boom" in doc["exc"]


def test_candidates_that_are_not_a_list_give_a_config_error() -> None:
    """Found by the hostile-input property test: ``candidates: true`` raised a TypeError in
    the environment overrides instead of naming the field."""
    doc = {
        "routes": [
            {
                "name": "r",
                "production": {"name": "p", "url": "http://127.0.0.1:1"},
                "candidates": True,
            }
        ]
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc, environ={})
    assert "routes[0].candidates: Input should be a valid list" in str(err.value)


def test_secret_files_are_read_by_the_loader_only(tmp_path: Path) -> None:
    """``core`` reads no files: a ``file:`` secret is read when the config is loaded from its
    file (``configfile.load_config``), and is a clear problem when a document is validated
    without file access."""
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    doc = minimal()
    doc["routes"][0]["candidates"][0]["secret_headers"] = {"X-Api-Key": f"file:{key}"}
    with pytest.raises(ConfigError, match="secret files are read only when the config is loaded"):
        parse_config(doc, environ={})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path, environ={})
    assert cfg.routes[0].candidates[0]._secrets["X-Api-Key"].get_secret_value() == "s3cret"
