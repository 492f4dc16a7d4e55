"""The configuration the demo runs with: one route in front of the demo model servers, speaking
Open Inference Protocol v2, with drift watched on a few input features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from shadowroute.core.config import Config, parse_config
from shadowroute.demo.models import Dataset
from shadowroute.demo.oip import infer_request
from shadowroute.demo.scenarios import DRIFT_FIELDS, ROUTE, SERVED_NAME, Scenario

CLASSES = ["malignant", "benign"]
"""The data set's target: 0 = malignant, 1 = benign."""

POLICY: dict[str, Any] = {
    "alpha": 0.05,
    "min_pairs": 200,
    "min_labelled": 100,
    "primary_metric": "accuracy",
    "mode": "superiority",
    # An error-rate guardrail of δ needs about 7/δ clean pairs before it can pass (the
    # confidence sequence of an all-zero difference narrows like 6.9/n at α/4; a hold's
    # reasons give the estimate): 0.05 lets a one-minute demo decide; production configs
    # usually keep the default 0.01.
    "guardrails": {
        "error_rate_delta": 0.05,
        "timeout_rate_delta": 0.05,
        "availability_delta": 0.05,
    },
}


def drift_field(index: int) -> str:
    """The JSON path of one feature in a one-row request."""
    return f"$.inputs[0].data[{index}]"


def write_reference(data: Dataset, path: Path) -> Path:
    """Every row of the data set (as collected before the models went live) as request bodies,
    one per line: drift bins are frozen from them.

    Only 228 rows are replayed; against the 341 training rows alone, sampling noise gives PSIs
    up to about 0.16 on an unchanged stream (a false "minor"), while against all 569 rows
    (which include the replayed ones) an unchanged stream stays well below 0.1."""
    with path.open("wb") as fh:
        for row in np.concatenate([data.x_train, data.x_test]):
            fh.write(orjson.dumps(infer_request(row)) + b"\n")
    return path


def demo_config(
    scn: Scenario,
    production_port: int,
    candidate_port: int,
    *,
    admin_port: int,
    listen_port: int,
    state_dir: Path,
    reference_file: Path,
) -> Config:
    route: dict[str, Any] = {
        "name": ROUTE,
        "path_prefix": f"/v2/models/{SERVED_NAME}",
        "protocol": "openinference",
        "task": "classification",
        "output": "predict_proba",
        "classes": CLASSES,
        "production": {
            "name": scn.production.name,
            "version": scn.production.version,
            "url": f"http://127.0.0.1:{production_port}",
            "timeout_s": 5,
        },
        "candidates": [
            {
                "name": scn.candidate.name,
                "version": scn.candidate.version,
                "url": f"http://127.0.0.1:{candidate_port}",
                "fraction": 1.0,
                "timeout_s": 5,
            }
        ],
        "drift": {
            "fields": [drift_field(i) for i in DRIFT_FIELDS],
            "reference_file": str(reference_file),
        },
        "policy": POLICY,
        "label_ttl_s": 600,
    }
    return one_route_config(
        route, admin_port=admin_port, listen_port=listen_port, state_dir=state_dir
    )


def one_route_config(
    route: dict[str, Any], *, admin_port: int, listen_port: int, state_dir: Path
) -> Config:
    """A demo's config: ``route`` on loopback, the embedded comparator's state in
    ``state_dir``."""
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": listen_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "transport": {"kind": "embedded"},
        "comparator": {"state_path": str(state_dir / "state.sqlite")},
        "routes": [route],
    }
    return parse_config(raw, environ={})
