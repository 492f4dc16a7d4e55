"""The configuration's sources: the YAML file, the process's environment and secret files.

``core.config`` validates a document it is given; this module is where the file system and
``os.environ`` are read for it. ``load_config(path)`` is what the commands call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from shadowroute.core.config import Config, ConfigError, config_problems, parse_config

__all__ = ["check_raw", "load_config", "read_document", "read_secret_file"]


def read_document(path: str | Path) -> object:
    """The YAML document at ``path`` (``{}`` when empty); ``ConfigError`` when it cannot be
    read or is not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{where}: invalid YAML: {problem}"]) from None
    return raw if raw is not None else {}


def read_secret_file(path: str) -> str:
    """A secret header's value from its file (``file:/path``)."""
    return Path(path).read_text(encoding="utf-8")


def check_raw(
    raw: object, environ: Mapping[str, str] | None = None
) -> tuple[Config | None, list[str]]:
    """``core.config.config_problems`` with this process's environment (unless ``environ`` is
    given) and secret files read from disk."""
    return config_problems(raw, os.environ if environ is None else environ, read_secret_file)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment (this process's unless ``environ`` is given), and
    validate a YAML config file; ``ConfigError`` with every problem when it is not valid."""
    env = os.environ if environ is None else environ
    return parse_config(read_document(path), env, read_secret_file)
