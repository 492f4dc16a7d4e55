"""The `registry` config section: each mistake reported at its key in words that say what to
do, the token read from the environment or a file at start (and never shown), `config check`
once for real."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowroute.configfile import load_config
from shadowroute.core.config import config_problems

ROUTES = [
    {
        "name": "fraud",
        "jsonpath": "$.p",
        "production": {"name": "prod", "url": "http://127.0.0.1:9001"},
        "candidates": [{"name": "v2", "url": "http://127.0.0.1:9002"}],
    }
]


def doc(**registry: Any) -> dict[str, Any]:
    reg: dict[str, Any] = {
        "tracking_uri": "http://127.0.0.1:5000",
        "public_base_url": "https://shadowroute.example.com",
        "models": [
            {"route": "fraud", "model": "prod", "registered_model": "fraud", "alias": "champion"},
            {
                "route": "fraud",
                "model": "v2",
                "registered_model": "fraud",
                "alias": "challenger",
                "promote_alias": "champion",
            },
        ],
    }
    return {"routes": copy.deepcopy(ROUTES), "registry": reg | registry}


def problems(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    config, found = config_problems(raw, environ or {})
    assert (config is None) == bool(found)
    return found


def test_a_valid_section_and_its_defaults() -> None:
    config, found = config_problems(doc(), {})
    assert found == [] and config is not None and config.registry is not None
    reg = config.registry
    assert (reg.kind, reg.timeout_s, reg.retries, reg.refresh_s) == ("mlflow", 5.0, 3, 60.0)
    assert reg.token_value() is None
    b = reg.binding("fraud", "v2")
    assert b is not None and b.promote_alias == "champion" and b.version is None
    assert reg.binding("fraud", "nope") is None
    # a version written as a YAML number is the registry's version string
    raw = doc(models=[{"route": "fraud", "model": "v2", "registered_model": "m", "version": 7}])
    config, found = config_problems(raw, {})
    assert found == [] and config is not None and config.registry is not None
    assert config.registry.models[0].version == "7"


@pytest.mark.parametrize(
    ("binding", "problem"),
    [
        ({"route": "nope"}, "registry.models[1].route: no route named 'nope'"),
        ({"model": "v9"}, "registry.models[1].model: route 'fraud' has no model named 'v9'"),
        ({"version": "3"}, "registry.models[1]: give exactly one of version (a number) or alias"),
        ({"alias": None}, "registry.models[1]: give exactly one of version (a number) or alias"),
        ({"alias": "latest"}, "registry.models[1].alias: 'latest' is reserved by MLflow"),
        ({"alias": "v3"}, "registry.models[1].alias: 'v3' is reserved by MLflow"),
        ({"alias": "a b"}, "registry.models[1].alias: an alias is 1 to 255 letters"),
        ({"promote_alias": "challenger"}, "registry.models[1].promote_alias: must differ"),
        (
            {"alias": None, "version": "0"},
            "registry.models[1].version: must be a version number of the registered model",
        ),
        ({"registered_model": ""}, "registry.models[1].registered_model: String should have"),
        ({"color": "red"}, "registry.models[1].color: unknown key"),
    ],
)
def test_each_binding_mistake_at_its_key(binding: dict[str, Any], problem: str) -> None:
    raw = doc()
    raw["registry"]["models"][1] |= binding
    raw["registry"]["models"][1] = {
        k: v for k, v in raw["registry"]["models"][1].items() if v is not None
    }
    found = problems(raw)
    assert len(found) == 1 and found[0].startswith(problem), found


def test_section_mistakes_at_their_keys() -> None:
    raw = doc(tracking_uri="mlflow:5000", public_base_url="http://", kind="sagemaker")
    raw["registry"]["token"] = "s3cret"
    found = problems(raw)
    assert any(
        p.startswith("registry.tracking_uri: must be an http:// or https:// URL") for p in found
    )
    assert any(p.startswith("registry.public_base_url: has no host") for p in found)
    assert any(p.startswith("registry.kind: Input should be 'mlflow'") for p in found)
    assert any(p.startswith("registry.token: must be env:VARIABLE or file:PATH") for p in found)
    raw = doc()
    raw["registry"]["models"].append(raw["registry"]["models"][0])
    assert problems(raw) == ["registry.models[2]: fraud/prod is bound twice"]
    raw = doc()
    raw["registry"]["models"][0]["promote_alias"] = "gold"
    assert problems(raw) == [
        "registry.models[0].promote_alias: only a candidate's version can be promoted"
    ]
    raw = doc(models=[])
    assert problems(raw)[0].startswith("registry.models: List should have at least 1 item")
    for key, value in (("retries", 11), ("timeout_s", 0), ("refresh_s", 0.5)):
        assert problems(doc(**{key: value}))[0].startswith(f"registry.{key}: ")


def test_token_from_environment_or_file(tmp_path: Path) -> None:
    found = problems(doc(token="env:MLFLOW_TRACKING_TOKEN"))
    assert found == ["registry.token: environment variable MLFLOW_TRACKING_TOKEN is not set"]
    config, found = config_problems(
        doc(token="env:MLFLOW_TRACKING_TOKEN"), {"MLFLOW_TRACKING_TOKEN": "tok-1"}
    )
    assert found == [] and config is not None and config.registry is not None
    assert config.registry.token_value() == "tok-1"
    assert "tok-1" not in repr(config.registry)
    secret = tmp_path / "token"
    secret.write_text("tok-2\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc(token=f"file:{secret}")))
    config = load_config(str(path))
    assert config.registry is not None and config.registry.token_value() == "tok-2"
    assert "tok-2" not in repr(config)
    found = problems(doc(token=f"file:{secret}"))  # no file access without a config file
    assert found[0].startswith("registry.token: cannot read")


def test_config_check_names_registry_problems(tmp_path: Path) -> None:
    raw = doc()
    raw["registry"]["models"][1]["model"] = "v9"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = subprocess.run(
        [sys.executable, "-m", "shadowroute", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out
    assert "\n  registry.models[1].model: route 'fraud' has no model named 'v9'" in out.stderr
    assert "Traceback" not in out.stderr
