"""The control plane's own documents, declared once as TypedDicts (the read side's are in
``shadowroute.comparator.documents``); ``shadowroute.api.openapi`` generates their schemas."""

from typing import Annotated, Literal, NotRequired, TypedDict

__all__ = [
    "CandidateMirror",
    "ConfiguredRoutes",
    "MirrorChange",
    "MirrorSettings",
    "ModelRevision",
    "RouteCandidate",
    "RouteModel",
    "RouteSummary",
]


class ModelRevision(TypedDict):
    """``GET|PUT .../revision``: a model's live revision identity"""

    route: str
    model: str
    role: Literal["production", "candidate"]
    url: str
    version: str | None
    revision: str | None
    source: Annotated[Literal["config", "api"], "Where the revision comes from"]


class MirrorSettings(TypedDict):
    enabled: bool
    fraction: float


class MirrorChange(TypedDict):
    """One change of the mirroring settings (the API's or a reload's)."""

    at_ms: Annotated[int, "Unix time of the change, ms"]
    route: Annotated[str | None, "null: the global switch"]
    candidate: str | None
    before: Annotated[dict[str, object] | None, "null: not configured before"]
    after: Annotated[dict[str, object] | None, "null: left the config"]
    source: Literal["api", "reload"]


class CandidateMirror(TypedDict):
    """``GET|PUT|DELETE .../mirror``: a candidate's live mirroring."""

    route: str
    candidate: str
    enabled: bool
    fraction: float
    effective_fraction: Annotated[
        float, "What the data plane samples with: fraction, or 0 while off"
    ]
    source: Literal["api", "config"]
    config: MirrorSettings
    mirroring: Annotated[bool, "The global switch"]
    changes: list[MirrorChange]


class RouteModel(TypedDict):
    name: str
    version: str | None
    revision: Annotated[str | None, "The live revision"]


class RouteCandidate(TypedDict):
    name: str
    version: str | None
    revision: Annotated[str | None, "The live revision"]
    fraction: Annotated[float, "The configured mirror fraction"]
    effective_fraction: NotRequired[
        Annotated[
            float,
            "Where the process proxies: the live fraction (API, reloads), 0 while the candidate "
            "is off",
        ]
    ]


class RouteSummary(TypedDict):
    name: str
    path_prefix: str
    protocol: str
    task: str
    production: RouteModel
    candidates: list[RouteCandidate]


class ConfiguredRoutes(TypedDict):
    """``GET /v1/routes``: the routes of the config of the moment (after a reload, its)."""

    routes: list[RouteSummary]
