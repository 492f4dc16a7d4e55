"""Every check ``serve`` runs before it binds anything, in one pass: what ``config check``
reports and what ``serve`` refuses to start on.

``check_file(path)`` returns a ``Report``: the config (None when it has errors) and every
problem found at once, each ``path: what is wrong and what to do``:

- the config model's own validation and its checks across sections (``core.config``): field
  values, URLs (on ``.url``), drift and extraction paths, the listen and admin ports, a model URL
  that points back at the proxy, secret headers;
- files the run reads at start: each route's ``drift.reference_file`` (of a known format and,
  when present and the config is valid, loaded as the comparator loads it);
- this machine, now: whether the files a run reads are there (the reference files, the
  directory of the embedded comparator's state file, Kafka TLS files) and whether the listen
  and admin addresses can be bound (a port already in use, an address this machine does not
  have). These are ``environment`` problems: warnings for ``config check`` (the config may be
  meant for another machine: a pod's volumes, its ports), errors for ``serve``.

No event loop; the only effects are reads of the files named and a bind of a probe socket,
closed at once.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowroute.configfile import check_raw, read_document
from shadowroute.core.config import Admin, Config, ConfigError, Listen
from shadowroute.core.config_cross import address_of

__all__ = ["Problem", "Report", "check_document", "check_file", "file_problems", "port_problems"]

REFERENCE_FORMATS = (".csv", ".jsonl", ".ndjson", ".json", ".parquet")


@dataclass(frozen=True)
class Problem:
    """``text`` is ``path: what is wrong``; ``environment``: about this machine now (a port in
    use), not about the config itself."""

    text: str
    environment: bool = False

    def __str__(self) -> str:
        return self.text


@dataclass
class Report:
    config: Config | None
    """The validated config; None when any problem is not an environment one."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def config_errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.environment]

    @property
    def environment(self) -> list[Problem]:
        return [p for p in self.problems if p.environment]


def _route_list(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    routes = raw.get("routes")
    return [r if isinstance(r, Mapping) else {} for r in routes] if isinstance(routes, list) else []


def _file_problem(name: str, *, purpose: str) -> str | None:
    """What is wrong with reading the file ``name`` (None: nothing)."""
    p = Path(name)
    where = "" if p.is_absolute() else f" (relative to the working directory {os.getcwd()})"
    if not p.exists():
        return f"file not found: {name}{where}; {purpose}"
    if not p.is_file():
        return f"{name} is not a file{where}; {purpose}"
    if not os.access(p, os.R_OK):
        return f"{name} cannot be read by this user{where}"
    return None


def file_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """Files named by the raw document (after environment overrides) that a run reads at start
    and cannot: reference files, the state file's directory, Kafka TLS files. That a file is
    missing here is an environment problem (it may be on the machine the config is for); a
    reference file of an unknown format is not."""
    out: list[Problem] = []
    for i, route in enumerate(_route_list(raw)):
        drift = route.get("drift")
        ref = drift.get("reference_file") if isinstance(drift, Mapping) else None
        if not isinstance(ref, str):
            continue
        loc = f"routes[{i}].drift.reference_file"
        if Path(ref).suffix.lower() not in REFERENCE_FORMATS:
            out.append(
                Problem(
                    f"{loc}: {ref}: unknown format {Path(ref).suffix!r}; the file must end in "
                    + ", ".join(REFERENCE_FORMATS)
                )
            )
            continue
        wrong = _file_problem(
            ref, purpose="give the training data's path, or leave reference_file out to "
            "freeze the bins from the first requests"
        )  # fmt: skip
        if wrong:
            out.append(Problem(f"{loc}: {wrong}", environment=True))
    transport = raw.get("transport")
    transport = transport if isinstance(transport, Mapping) else {}
    if transport.get("kind", "embedded") == "embedded":
        comparator = raw.get("comparator")
        comparator = comparator if isinstance(comparator, Mapping) else {}
        state = comparator.get("state_path", "./shadowroute-state.sqlite")
        if isinstance(state, str):
            parent = Path(state).parent
            if not parent.is_dir():
                out.append(
                    Problem(
                        f"comparator.state_path: the directory {parent} does not exist; "
                        "create it or choose a path in an existing directory",
                        environment=True,
                    )
                )
            elif not os.access(parent, os.W_OK | os.X_OK):
                out.append(
                    Problem(
                        f"comparator.state_path: the directory {parent} is not writable",
                        environment=True,
                    )
                )
    security = transport.get("security")
    if transport.get("kind") == "kafka" and isinstance(security, Mapping):
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            name = security.get(key)
            if isinstance(name, str):
                wrong = _file_problem(name, purpose="give the path of the PEM file")
                if wrong:
                    out.append(Problem(f"transport.security.{key}: {wrong}", environment=True))
    return out


def reference_problems(config: Config) -> list[Problem]:
    """Each route's reference file loaded as the comparator loads it at start (a missing
    column, a malformed line, Parquet without pyarrow)."""
    from shadowroute.comparator.reference import reference_for

    out: list[Problem] = []
    for i, route in enumerate(config.routes):
        if route.drift.reference_file is None:
            continue
        try:
            reference_for(route)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            out.append(Problem(f"routes[{i}].drift.reference_file: cannot be used: {exc}"))
    return out


def _bind_problem(host: str, port: int) -> tuple[str, str] | None:
    """(key, what is wrong) when ``host:port`` cannot be bound now; None when it can. The
    probe shares nothing (no SO_REUSEPORT), as ``serve`` checks before its workers bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            probe.bind((host, port))
    except socket.gaierror as exc:
        return "host", f"{host!r} does not resolve to an address: {exc.strerror or exc}"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "port", (
                f"{host}:{port} is already in use by another process (is another shadowroute "
                "serving it?); stop it or choose another port"
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return "host", f"{host} is not an address of this machine"
        if exc.errno == errno.EACCES:
            return "port", f"port {port} on {host} needs privileges this user does not have"
        return "port", f"{host}:{port} cannot be bound: {exc.strerror or exc}"
    return None


def port_problems(raw: Mapping[str, Any]) -> list[Problem]:
    """The listen and admin addresses that cannot be bound on this machine now (port 0, any
    free port, always can)."""
    out: list[Problem] = []
    for section, model in (("listen", Listen), ("admin", Admin)):
        addr = address_of(raw, section, model)
        if addr is None:
            continue
        found = _bind_problem(*addr)
        if found is not None:
            key, message = found
            out.append(Problem(f"{section}.{key}: {message}", environment=True))
    return out


def check_document(
    raw: object, environ: Mapping[str, str] | None = None, *, ports: bool = True
) -> Report:
    """Every problem of an already-parsed document (see the module's docstring)."""
    config, found = check_raw(raw, environ)
    problems = [Problem(p) for p in found]
    if isinstance(raw, Mapping):  # environment overrides are applied to ``raw`` in place
        problems += file_problems(raw)
        if config is not None and not problems:
            problems += reference_problems(config)  # the files are there: read them
        if ports:
            problems += port_problems(raw)
    valid = config is not None and not any(not p.environment for p in problems)
    return Report(config if valid else None, problems)


def check_file(
    path: str | Path, environ: Mapping[str, str] | None = None, *, ports: bool = True
) -> Report:
    """Every problem of the config file at ``path``."""
    try:
        raw = read_document(path)
    except ConfigError as exc:
        return Report(None, [Problem(p) for p in exc.problems])
    return check_document(raw, environ, ports=ports)
