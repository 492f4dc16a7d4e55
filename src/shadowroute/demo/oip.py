"""Open Inference Protocol v2 request parsing and response building (pure).

Requests carry one input tensor of shape ``[N, F]`` (``FP64``/``FP32``, data flat row-major or
nested); responses carry one output, ``predict_proba``, of shape ``[N, k]`` in ``FP64``, as
MLServer does for a scikit-learn model with ``predict_proba``.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np

from shadowroute.demo.models import FloatArray

FLOAT_TYPES = frozenset({"FP64", "FP32", "FP16"})


class BadRequest(ValueError):
    """The request does not follow the protocol; the message says why."""


def _flat(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def parse_inputs(doc: Any, n_features: int) -> FloatArray:
    """The ``[N, n_features]`` matrix from an infer request body (already JSON-decoded)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest("body must be an object with a non-empty 'inputs' list")
    tensor = doc["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadRequest("inputs[0] must be an object")
    if tensor.get("datatype") not in FLOAT_TYPES:
        raise BadRequest(f"inputs[0].datatype must be one of {sorted(FLOAT_TYPES)}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or shape[1] != n_features
    ):
        raise BadRequest(f"inputs[0].shape must be [N, {n_features}], got {shape!r}")
    values = _flat(tensor.get("data"))
    if len(values) != shape[0] * shape[1]:
        raise BadRequest(f"inputs[0].data holds {len(values)} values, shape needs {shape}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise BadRequest("inputs[0].data must hold numbers")
    matrix = np.asarray(values, dtype=np.float64).reshape(shape[0], shape[1])
    if not np.all(np.isfinite(matrix)):
        raise BadRequest("inputs[0].data must be finite")
    return matrix


def infer_response(
    model_name: str, version: str, request_id: str | None, proba: FloatArray
) -> dict[str, Any]:
    """The response body for ``proba`` (``[N, k]`` class probabilities)."""
    data = [float(v) if math.isfinite(v) else 0.0 for v in proba.ravel().tolist()]
    return {
        "model_name": model_name,
        "model_version": version,
        "id": request_id or str(uuid.uuid4()),
        "parameters": {},
        "outputs": [
            {
                "name": "predict_proba",
                "shape": [int(proba.shape[0]), int(proba.shape[1])],
                "datatype": "FP64",
                "data": data,
            }
        ],
    }


def infer_request(row: FloatArray, request_id: str | None = None) -> dict[str, Any]:
    """A one-row request, as a client would send it."""
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [1, int(row.shape[0])],
                "datatype": "FP64",
                "data": [float(v) for v in row.tolist()],
            }
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return body
