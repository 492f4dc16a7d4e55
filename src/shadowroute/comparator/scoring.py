"""Per-instance scoring by task: agreement, output deltas and quality against a label.

Pure functions over Python values (one prediction per instance, as in ``Side.output``). A
value that does not fit the task (a string where a probability is expected, a label that names
no class) gives ``None`` and is counted as invalid by the caller, never raised.

- classification: outputs are class labels; agreement is equality; quality is accuracy.
- probability: outputs are a probability of the positive class (a number in [0, 1]) or a list
  of class probabilities; agreement is top-1 (argmax) equality; quality is log-loss and the
  multiclass Brier score ``Σ_k (p_k − 1[y = k])²`` (a binary ``p`` is read as ``[1 − p, p]``).
- regression: outputs are numbers; agreement is ``|Δ| ≤ max(abs_tol, rel_tol·|production|)``;
  quality is absolute and squared error.
- text: outputs are strings; agreement is exact match, plus a normalised similarity
  (``difflib.SequenceMatcher.ratio``); quality is exact match with the label.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "LABELLED_METRICS",
    "MONITOR_METRIC",
    "agree",
    "class_key",
    "class_name",
    "delta",
    "label_index",
    "prob_vector",
    "quality",
    "similarity",
    "worst_quality",
]

REGRESSION_ABS_TOL: Final = 1e-6
REGRESSION_REL_TOL: Final = 0.01
LOG_EPS: Final = 1e-6
SIMILARITY_MAX_CHARS: Final = 4096

LABELLED_METRICS: Final[dict[str, tuple[str, ...]]] = {
    "classification": ("accuracy",),
    "probability": ("log_loss", "brier"),
    "regression": ("mae", "mse"),
    "text": ("exact_match",),
}
"""The paired quality metrics kept per task when ground truth is joined."""

MONITOR_METRIC: Final[dict[str, str]] = {
    "classification": "accuracy",
    "probability": "log_loss",
    "regression": "mae",
    "text": "accuracy",
}
"""The ``WindowedQuality`` metric used to watch production per task (text: exact match)."""


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    x = float(v)
    return x if math.isfinite(x) else None


def class_key(v: Any) -> str | None:
    """A class label's comparable form: ``1``, ``1.0`` and ``"1"`` are the same class."""
    kind = type(v)
    if kind is int:
        return str(v)
    if kind is str:
        return v  # type: ignore[no-any-return]
    if v is None or isinstance(v, list | dict):
        return None
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def prob_vector(v: Any) -> list[float] | None:
    """Class probabilities: a number p in [0, 1] is ``[1 − p, p]``; a list is taken as is."""
    x = _number(v)
    if x is not None:
        return [1.0 - x, x] if 0.0 <= x <= 1.0 else None
    if isinstance(v, list) and len(v) >= 2:
        out = [_number(p) for p in v]
        if all(p is not None and 0.0 <= p <= 1.0 for p in out):
            return [p for p in out if p is not None]
    return None


def label_index(label: Any, classes: Sequence[str] | None, n: int) -> int | None:
    """The class index of a label among ``n`` classes: an index, a bool, or a class name."""
    if isinstance(label, bool):
        idx: int | None = int(label)
    elif isinstance(label, int) or (isinstance(label, float) and label.is_integer()):
        idx = int(label)
    elif isinstance(label, str) and classes is not None and label in classes:
        idx = list(classes).index(label)
    elif isinstance(label, str) and label.lstrip("-").isdigit():
        idx = int(label)
    else:
        idx = None
    return idx if idx is not None and 0 <= idx < n else None


def _argmax(p: list[float]) -> int:
    return max(range(len(p)), key=p.__getitem__)


def agree(task: str, prod: Any, cand: Any) -> bool | None:
    """Whether the candidate agrees with production on one instance (None: not comparable)."""
    if task == "classification":
        a, b = class_key(prod), class_key(cand)
        return None if a is None or b is None else a == b
    if task == "probability":
        p, q = prob_vector(prod), prob_vector(cand)
        if p is None or q is None or len(p) != len(q):
            return None
        return _argmax(p) == _argmax(q)
    if task == "regression":
        x, y = _number(prod), _number(cand)
        if x is None or y is None:
            return None
        return abs(y - x) <= max(REGRESSION_ABS_TOL, REGRESSION_REL_TOL * abs(x))
    if isinstance(prod, str) and isinstance(cand, str):
        return prod == cand
    return None


def similarity(prod: Any, cand: Any) -> float | None:
    """``difflib`` ratio in [0, 1] of two texts (each cut to 4096 characters)."""
    if not isinstance(prod, str) or not isinstance(cand, str):
        return None
    if prod == cand:
        return 1.0
    a, b = prod[:SIMILARITY_MAX_CHARS], cand[:SIMILARITY_MAX_CHARS]
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def delta(task: str, prod: Any, cand: Any) -> tuple[float, float] | None:
    """``(|Δ|, relative |Δ|)`` of two numeric outputs (regression) or probability vectors
    (total variation distance, which is already relative)."""
    if task == "regression":
        x, y = _number(prod), _number(cand)
        if x is None or y is None:
            return None
        d = abs(y - x)
        return d, d / max(abs(x), 1e-12)
    if task == "probability":
        p, q = prob_vector(prod), prob_vector(cand)
        if p is None or q is None or len(p) != len(q):
            return None
        tv = 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))
        return tv, tv
    return None


# Not ``Final``: mypyc leaves a ``Final`` tuple unset in the compiled module.
_RIGHT: tuple[float, ...] = (1.0,)
_WRONG: tuple[float, ...] = (0.0,)


def quality(task: str, pred: Any, label: Any, classes: Sequence[str] | None) -> tuple[float, ...]:
    """The task's per-instance quality values (``LABELLED_METRICS`` order), or ``()`` when the
    prediction or the label does not fit the task."""
    if type(pred) is int and type(label) is int and classes is None and task == "classification":
        return _RIGHT if pred == label else _WRONG  # two class indices: the common case
    if task == "classification":
        a, b = class_name(pred, classes), class_name(label, classes)
        if a is None or b is None:
            return ()
        return (1.0 if a == b else 0.0,)
    if task == "probability":
        p = prob_vector(pred)
        if p is None:
            return ()
        k = label_index(label, classes, len(p))
        if k is None:
            return ()
        ll = -math.log(min(max(p[k], LOG_EPS), 1.0 - LOG_EPS))
        brier = sum((pi - (1.0 if i == k else 0.0)) ** 2 for i, pi in enumerate(p))
        return (ll, brier)
    if task == "regression":
        x, y = _number(pred), _number(label)
        if x is None or y is None:
            return ()
        return (abs(x - y), (x - y) ** 2)
    if isinstance(pred, str) and isinstance(label, str):
        return (1.0 if pred == label else 0.0,)
    return ()


def worst_quality(task: str) -> tuple[float, ...]:
    """The quality values a labelled instance gets when the model gave no usable prediction
    for it: wrong (accuracy, exact match), the clipped log-loss ``−log 1e-6`` and the largest
    Brier score 2. Regression errors have no worst value: ``()`` (the instance is not scored;
    the availability guardrail counts it)."""
    if task == "probability":
        return (-math.log(LOG_EPS), 2.0)
    if task == "regression":
        return ()
    return _WRONG


def class_name(v: Any, classes: Sequence[str] | None) -> str | None:
    """``class_key``, with an integral index into ``classes`` read as that class's name."""
    key = class_key(v)
    if key is None or classes is None or key in classes:
        return key
    if key.lstrip("-").isdigit() and 0 <= int(key) < len(classes):
        return classes[int(key)]
    return key
