"""``config check`` runs every check ``serve`` runs before binding and reports every problem at
once, each at its exact field path, in words that say what to do. The checks are a pure pass
(``preflight.check_document``), tested here without an event loop; the CLI once, for real."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyutil import free_port
from shadowroute.core.config import ConfigError, config_problems, parse_config
from shadowroute.core.config_cross import cross_problems
from shadowroute.preflight import Report, check_document


def base(tmp_path: Path) -> dict[str, Any]:
    """A valid config on free ports, its state file in ``tmp_path``."""
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {
                "name": "r",
                "protocol": "kserve-v1",
                "production": {"name": "p", "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": "c", "url": "http://127.0.0.1:9002"}],
            }
        ],
    }


def check(doc: dict[str, Any], *, ports: bool = False) -> Report:
    return check_document(doc, environ={}, ports=ports)


def texts(report: Report) -> list[str]:
    return [str(p) for p in report.problems]


def only(report: Report) -> str:
    assert len(report.problems) == 1, texts(report)
    return str(report.problems[0])


def test_a_valid_config_has_no_problem(tmp_path: Path) -> None:
    report = check(base(tmp_path), ports=True)
    assert report.problems == [] and report.config is not None


def test_every_mistake_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    """The first hour's mistakes in one file: each is reported, at its key, in one pass (not
    one per attempt)."""
    doc = base(tmp_path)
    port = doc["listen"]["port"]
    doc["admin"]["port"] = port  # the admin plane on the proxy's port
    route = doc["routes"][0]
    del route["protocol"]  # left out: must not be reported as a jsonpath problem
    route["drift"] = {
        "fields": ["$.instances[*].amount", "$.inputs[0.data"],
        "reference_file": str(tmp_path / "missing.csv"),
    }
    route["production"]["url"] = f"http://localhost:{port}"  # the proxy itself
    route["candidates"][0]["url"] = "http://127.0.0.1:99999"
    report = check(doc)
    got = texts(report)
    assert report.config is None
    expected = {
        "routes[0].protocol: missing: say which protocol",
        "routes[0].drift.fields[1]: cannot parse path '$.inputs[0.data'",
        "routes[0].drift.reference_file: file not found: ",
        "admin.port: the same port as listen.port",
        "routes[0].production.url: points at this proxy's own listen address",
        "routes[0].candidates[0].url: the port must be a number from 1 to 65535",
    }
    for start in expected:
        assert [t for t in got if t.startswith(start)], (start, got)
    assert len(got) == len(expected), got
    assert not [t for t in got if "jsonpath'" in t and "protocol:" not in t], got


def test_a_malformed_drift_path_names_the_list_item(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["routes"][0]["drift"] = {"categorical": ["$.country", "$.a]["]}
    assert only(check(doc)).startswith("routes[0].drift.categorical[1]: cannot parse path")


def test_a_malformed_jsonpath_is_reported_on_jsonpath(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["routes"][0].update(protocol="jsonpath", jsonpath="$.result[")
    assert only(check(doc)).startswith("routes[0].jsonpath: ")


def test_a_missing_reference_file_says_where_it_looked(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["routes"][0]["drift"] = {"fields": ["$.x"], "reference_file": "ref/train.csv"}
    report = check(doc)
    text = only(report)
    assert text.startswith("routes[0].drift.reference_file: file not found: ref/train.csv")
    assert "relative to the working directory" in text
    # The file may be on the machine the config is for (a pod's volume): a warning for
    # `config check`, an error for `serve`.
    assert report.problems[0].environment and report.config is not None


def test_a_reference_file_is_loaded_as_the_comparator_would(tmp_path: Path) -> None:
    """Present but unusable: a JSONL line that is not JSON is found before start."""
    ref = tmp_path / "ref.jsonl"
    ref.write_text('{"x": 1}\nnot json\n')
    doc = base(tmp_path)
    doc["routes"][0]["drift"] = {"fields": ["$.x"], "reference_file": str(ref)}
    text = only(check(doc))
    assert text.startswith("routes[0].drift.reference_file: cannot be used: ")
    assert "invalid JSON" in text
    ref.write_text('{"x": 1}\n{"x": 2}\n')
    assert check(doc).problems == []


def test_a_reference_file_of_unknown_format(tmp_path: Path) -> None:
    ref = tmp_path / "ref.xlsx"
    ref.write_bytes(b"PK")
    doc = base(tmp_path)
    doc["routes"][0]["drift"] = {"fields": ["$.x"], "reference_file": str(ref)}
    assert "unknown format '.xlsx'" in only(check(doc))


def test_listen_and_admin_on_one_port(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["admin"]["port"] = doc["listen"]["port"]
    assert only(check(doc)).startswith("admin.port: the same port as listen.port")
    doc["listen"]["host"] = "0.0.0.0"  # the wildcard overlaps every address
    assert only(check(doc)).startswith("admin.port: ")
    doc["listen"]["port"] = doc["admin"]["port"] = 0  # any free port: never a clash
    assert check(doc).problems == []


def test_listen_and_admin_on_one_port_through_the_environment(tmp_path: Path) -> None:
    doc = base(tmp_path)
    env = {"SHADOWROUTE_ADMIN_PORT": str(doc["listen"]["port"])}
    _, problems = config_problems(doc, environ=env)
    assert [p for p in problems if p.startswith("admin.port: the same port")], problems


def test_a_url_port_out_of_range_is_reported_on_url(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["routes"][0]["production"]["url"] = "http://127.0.0.1:99999"
    text = only(check(doc))
    assert text.startswith("routes[0].production.url: the port must be a number from 1 to 65535")
    assert "99999" in text


@pytest.mark.parametrize(
    ("url", "start"),
    [
        ("ftp://x", "routes[0].candidates[0].url: must be an http:// or https:// URL"),
        ("http:///predict", "routes[0].candidates[0].url: has no host"),
        ("http://h:8000/p?q=1", "routes[0].candidates[0].url: must not carry a query"),
        ("http://h:0", "routes[0].candidates[0].url: the port must be a number"),
    ],
)
def test_url_errors_are_reported_on_url(tmp_path: Path, url: str, start: str) -> None:
    doc = base(tmp_path)
    doc["routes"][0]["candidates"][0]["url"] = url
    assert only(check(doc)).startswith(start)


@pytest.mark.parametrize(
    ("listen_host", "url_host", "loop"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "localhost", True),
        ("0.0.0.0", "127.0.0.1", True),
        ("0.0.0.0", "localhost", True),
        ("::", "[::1]", True),
        ("127.0.0.1", "0.0.0.0", True),
        ("127.0.0.1", "10.1.2.3", False),  # another machine on the same port
        ("127.0.0.1", "models.internal", False),
    ],
)
def test_a_url_pointing_at_the_proxy_itself_is_a_loop(
    tmp_path: Path, listen_host: str, url_host: str, loop: bool
) -> None:
    doc = base(tmp_path)
    doc["listen"]["host"] = listen_host
    doc["routes"][0]["candidates"][0]["url"] = f"http://{url_host}:{doc['listen']['port']}/v1"
    report = check(doc)
    if loop:
        text = only(report)
        assert text.startswith("routes[0].candidates[0].url: points at this proxy's own listen")
        assert "loop" in text
    else:
        assert report.problems == []


def test_a_url_pointing_at_the_admin_plane(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["routes"][0]["production"]["url"] = f"http://127.0.0.1:{doc['admin']['port']}"
    assert only(check(doc)).startswith("routes[0].production.url: points at this router's admin")


def test_a_left_out_protocol_is_reported_on_protocol_only(tmp_path: Path) -> None:
    doc = base(tmp_path)
    del doc["routes"][0]["protocol"]
    text = only(check(doc))
    assert text.startswith("routes[0].protocol: missing: say which protocol")
    assert "openinference" in text
    # ... also when the route has other problems (then the model's own route check never runs)
    doc["routes"][0]["production"]["timeout_s"] = -1
    got = texts(check(doc))
    assert [t for t in got if t.startswith("routes[0].protocol: missing")], got
    assert len(got) == 2, got


def test_protocol_jsonpath_without_a_path_is_reported_on_jsonpath(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["routes"][0]["protocol"] = "jsonpath"
    assert only(check(doc)).startswith("routes[0].jsonpath: protocol 'jsonpath' needs 'jsonpath'")


def test_left_out_protocol_with_a_jsonpath_is_fine(tmp_path: Path) -> None:
    doc = base(tmp_path)
    del doc["routes"][0]["protocol"]
    doc["routes"][0]["jsonpath"] = "$.prediction"
    assert check(doc).problems == []


def test_the_state_file_directory_must_exist(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["comparator"]["state_path"] = str(tmp_path / "no-such-dir" / "state.sqlite")
    report = check(doc)
    assert only(report).startswith("comparator.state_path: the directory ")
    assert report.problems[0].environment


def test_a_port_in_use_is_an_environment_problem(tmp_path: Path) -> None:
    doc = base(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        doc["listen"]["port"] = holder.getsockname()[1]
        report = check(doc, ports=True)
        (problem,) = report.problems
        assert problem.environment
        assert str(problem).startswith(f"listen.port: 127.0.0.1:{doc['listen']['port']} is ")
        assert "already in use" in str(problem)
        assert report.config is not None  # the config itself is fine
        assert check(doc, ports=False).problems == []


def test_a_listen_host_this_machine_does_not_have(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["listen"]["host"] = "192.0.2.1"  # TEST-NET-1: never a local address
    (problem,) = check(doc, ports=True).problems
    assert problem.environment
    assert str(problem) == "listen.host: 192.0.2.1 is not an address of this machine"


def test_cross_problems_are_pure_and_tolerate_a_broken_document() -> None:
    raw: dict[str, Any] = {"listen": "nonsense", "admin": {"port": "x"}, "routes": [3, {}]}
    assert cross_problems(raw) == [(("routes", 1, "protocol"), cross_problems(raw)[0][1])]
    with pytest.raises(ConfigError):
        parse_config(raw, environ={})


def test_parse_config_refuses_what_config_check_reports(tmp_path: Path) -> None:
    """``serve``, ``compare`` and the tests' own configs go through the same checks."""
    doc = base(tmp_path)
    doc["admin"]["port"] = doc["listen"]["port"]
    with pytest.raises(ConfigError, match=r"admin\.port: the same port"):
        parse_config(doc, environ={})


# --- the command --------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowroute", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_check_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["admin"]["port"] = doc["listen"]["port"]
    del doc["routes"][0]["protocol"]
    doc["routes"][0]["candidates"][0]["url"] = "http://127.0.0.1:99999"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = run_cli("config", "check", str(path))
    assert out.returncode == 1, out
    assert "invalid configuration (3 problems):" in out.stderr
    for key in ("admin.port:", "routes[0].protocol:", "routes[0].candidates[0].url:"):
        assert f"\n  {key} " in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_config_check_warns_about_a_port_in_use_and_exits_0(tmp_path: Path) -> None:
    doc = base(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        doc["admin"]["port"] = port = holder.getsockname()[1]
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(doc))
        out = run_cli("config", "check", str(path))
    assert out.returncode == 0, out
    assert out.stderr.startswith(f"warning: admin.port: 127.0.0.1:{port} is already in use")
    assert "OK (1 route(s), 1 candidate(s), transport embedded), 1 warning(s)" in out.stdout
