"""The config reference, generated from the config model itself (``shadowroute config
reference``), so the documentation cannot drift from the code."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from shadowroute.core.config import _ENV_SCALARS, Config


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is PydanticUndefined:
        factory = field.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return "(section)"  # a section built fresh for each use
        return ""
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "none"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def _models(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(tp):
        found.extend(_models(arg))
    return found


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    out.append(f"\n### `{prefix or '(top level)'}`\n")
    if model.__doc__ and model is not Config:
        out.append(model.__doc__.strip() + "\n")
    out.append("| key | type | default | meaning |\n|---|---|---|---|")
    nested = []
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        out.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in _models(field.annotation):
            is_list = typing.get_origin(field.annotation) is list
            path = f"{prefix}.{name}" if prefix else name
            nested.append((sub, path + ("[]" if is_list else "")))
    for sub, path in nested:
        _section(sub, path, out)


def reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the config model by `shadowroute config reference`; a test keeps this",
        "page in step with the code. One YAML file, validated at start: `shadowroute config",
        "check FILE` runs every check `serve` runs before it binds and lists every problem at",
        "once, each at its field path with what to do; unknown keys are errors (see",
        "[api.md](api.md#config-check)).",
        "",
        "## Environment overrides",
        "",
        "Addresses and secrets can come from the environment (they win over the file):",
        "",
        "| variable | sets |",
        "|---|---|",
    ]
    for var, path in _ENV_SCALARS.items():
        out.append(f"| `{var}` | `{'.'.join(path)}` |")
    out += [
        "| `SHADOWROUTE_ROUTE_<ROUTE>_PRODUCTION_URL` | `routes[name=ROUTE].production.url` |",
        "| `SHADOWROUTE_ROUTE_<ROUTE>_<MODEL>_URL` | that candidate's `url` |",
        "| `SHADOWROUTE_ROUTE_<ROUTE>_PRODUCTION_REVISION` | "
        "`routes[name=ROUTE].production.revision` |",
        "| `SHADOWROUTE_ROUTE_<ROUTE>_<MODEL>_REVISION` | that candidate's `revision` |",
        "",
        "Route and model names are upper-cased with every non-alphanumeric character as `_`.",
        "",
        "## Keys",
    ]
    _section(Config, "", out)
    return "\n".join(out) + "\n"
