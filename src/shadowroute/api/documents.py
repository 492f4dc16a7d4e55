"""The control plane's own documents, declared once as TypedDicts (the read side's are in
``shadowroute.comparator.documents``); ``shadowroute.api.openapi`` generates their schemas."""

from typing import Annotated, Literal, TypedDict

__all__ = ["ModelRevision"]


class ModelRevision(TypedDict):
    """``GET|PUT .../revision``: a model's live revision identity"""

    route: str
    model: str
    role: Literal["production", "candidate"]
    url: str
    version: str | None
    revision: str | None
    source: Annotated[Literal["config", "api"], "Where the revision comes from"]
