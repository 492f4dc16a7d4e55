"""Per-class views of a classification route: confusion matrices of production and a
candidate on the same labelled pairs, per-class precision, recall and F1, and the paired
per-class recall difference with an anytime-valid interval.

Everything is counts, so partitions merge by adding them. Classes come from model outputs and
labels, which outsiders control: at most ``max_classes`` are tracked (the route's declared
``classes`` when it has them, else the first ones seen); anything else counts in the ``other``
bucket and in ``untracked`` (instances with a label or a prediction outside the tracked set), as
does a class name longer than ``MAX_NAME`` characters.

The recall difference of class ``k`` is the mean of ``d = 1[C right] − 1[P right]`` over the
labelled instances whose label is ``k`` — a paired bounded mean like the accuracy comparison,
read with the same empirical-Bernstein confidence sequence from ``(n, Σd, Σd²) = (n_k, b_k −
c_k, b_k + c_k)``. The intervals of all tracked classes hold together: the route's ``alpha`` is
split evenly across ``max_classes`` (Bonferroni, fixed in advance), so the chance that any class's
interval ever misses its target is at most ``alpha``. Precision is not paired (each model's
precision is over its own predictions of the class, not the same requests): it is reported per
model, without an interval.

>>> c = ClassCounts(max_classes=3, alpha=0.05)
>>> for y, p, q in [("a", "a", "a"), ("a", "b", "a"), ("b", "b", "b"), ("b", "b", "a")]:
...     c.add(y, p, q, p == y, q == y)
>>> v = c.view()
>>> [(r["class"], r["production"]["recall"], r["candidate"]["recall"]) for r in v["per_class"]]
[('a', 0.5, 1.0), ('b', 1.0, 0.5)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shadowroute.comparator.documents import ClassFigures, ClassRow, ClassViews
from shadowroute.core.stats.confseq import eb_interval

__all__ = ["NONE", "OTHER", "ClassCounts"]

OTHER: Final = "__other__"
"""The bucket of every class beyond the tracked ones (its diagonal mixes classes: not right)."""
NONE: Final = "__none__"
"""The candidate's column for labelled instances it gave no usable prediction for."""
MAX_NAME: Final = 200
"""A class name longer than this is never tracked (it counts in ``OTHER``)."""
V_OPT: Final = 50.0
"""Where each class's interval is tightest, in discordant pairs of that class."""

Matrix = dict[str, dict[str, int]]


def _bump(m: Matrix, row: str, col: str, n: int = 1) -> None:
    r = m.get(row)
    if r is None:
        m[row] = {col: n}
    else:
        r[col] = r.get(col, 0) + n


@dataclass
class ClassCounts:
    """Mergeable per-class counts of one (route, candidate) on one partition."""

    max_classes: int
    alpha: float
    declared: bool = False
    """The tracked classes are the route's declared ``classes`` (no other is ever added)."""
    classes: list[str] = field(default_factory=list)
    prod: Matrix = field(default_factory=dict)
    """label -> production's prediction -> instances."""
    cand: Matrix = field(default_factory=dict)
    """label -> the candidate's prediction (``NONE``: no usable one) -> instances."""
    paired: dict[str, list[int]] = field(default_factory=dict)
    """label -> [instances, candidate-only right (b), production-only right (c)]."""
    untracked: int = 0
    """Instances with a label or a prediction outside the tracked classes (in ``OTHER``)."""
    _known: set[str] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._known = set(self.classes)

    @classmethod
    def create(cls, alpha: float, declared: Sequence[str] | None, max_classes: int) -> ClassCounts:
        """Declared classes are tracked, and only they; else the first ``max_classes`` seen."""
        if declared:
            names = list(dict.fromkeys(declared))
            return cls(max_classes=len(names), alpha=alpha, declared=True, classes=names)
        return cls(max_classes=max_classes, alpha=alpha)

    def _slot(self, name: str) -> str:
        if name in self._known:
            return name
        if (
            self.declared
            or len(self.classes) >= self.max_classes
            or len(name) > MAX_NAME
            or name in (OTHER, NONE)
        ):
            return OTHER
        self.classes.append(name)
        self._known.add(name)
        return name

    def add(
        self, label: str, prod: str, cand: str | None, p_right: bool, c_right: bool, n: int = 1
    ) -> None:
        """``n`` labelled instances: the label's class, both predictions' classes (``None``:
        the candidate gave no usable prediction) and whether each model was right."""
        y = self._slot(label)
        p = self._slot(prod)
        c = NONE if cand is None else self._slot(cand)
        if y == OTHER or p == OTHER or c == OTHER:
            self.untracked += n
        _bump(self.prod, y, p, n)
        _bump(self.cand, y, c, n)
        pr = self.paired.get(y)
        if pr is None:
            pr = self.paired[y] = [0, 0, 0]
        pr[0] += n
        if c_right and not p_right:
            pr[1] += n
        elif p_right and not c_right:
            pr[2] += n

    # --- merge and serialisation ------------------------------------------------------------

    def merge(self, other: ClassCounts) -> ClassCounts:
        """The counts of the union. When the two track different classes and together more
        than ``max_classes``, the first ``max_classes`` (this side's order, then the other's)
        stay and the rest fold into ``OTHER`` (their instances counted in ``untracked``)."""
        names = list(dict.fromkeys([*self.classes, *other.classes]))
        kept = names[: self.max_classes] if not self.declared else list(self.classes)
        out = ClassCounts(self.max_classes, self.alpha, self.declared, kept)
        keep = out._known
        for side in (self, other):
            folded = 0
            for y, row in side.prod.items():
                for p, n in row.items():
                    yk = y if y in keep or y == OTHER else OTHER
                    pk = p if p in keep or p == OTHER else OTHER
                    if (yk == OTHER and y != OTHER) or (pk == OTHER and p != OTHER):
                        folded += n
                    _bump(out.prod, yk, pk, n)
            for y, row in side.cand.items():
                for p, n in row.items():
                    yk = y if y in keep or y == OTHER else OTHER
                    pk = p if p in keep or p in (OTHER, NONE) else OTHER
                    _bump(out.cand, yk, pk, n)
            for y, (n, b, c) in side.paired.items():
                yk = y if y in keep or y == OTHER else OTHER
                pr = out.paired.setdefault(yk, [0, 0, 0])
                pr[0] += n
                pr[1] += b
                pr[2] += c
            out.untracked += side.untracked + folded
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_classes": self.max_classes,
            "alpha": self.alpha,
            "declared": self.declared,
            "classes": list(self.classes),
            "prod": {y: dict(r) for y, r in self.prod.items()},
            "cand": {y: dict(r) for y, r in self.cand.items()},
            "paired": {y: list(v) for y, v in self.paired.items()},
            "untracked": self.untracked,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassCounts:
        def matrix(m: Mapping[str, Any]) -> Matrix:
            return {str(y): {str(p): int(n) for p, n in r.items()} for y, r in m.items()}

        return cls(
            max_classes=int(data["max_classes"]),
            alpha=float(data["alpha"]),
            declared=bool(data["declared"]),
            classes=[str(c) for c in data["classes"]],
            prod=matrix(data["prod"]),
            cand=matrix(data["cand"]),
            paired={str(y): [int(x) for x in v] for y, v in data["paired"].items()},
            untracked=int(data["untracked"]),
        )

    # --- reading ----------------------------------------------------------------------------

    def view(self) -> ClassViews:
        """Per-class figures, confusion matrices and the paired recall differences (JSON)."""
        classes = list(self.classes)
        per_class: list[ClassRow] = []
        k = max(self.max_classes, 1)
        level = self.alpha / k
        for name in classes:
            n, b, c = self.paired.get(name, [0, 0, 0])
            lower, upper = eb_interval(n, float(b - c), float(b + c), level, v_opt=V_OPT)
            per_class.append(
                {
                    "class": name,
                    "support": n,
                    "production": _figures(self.prod, name),
                    "candidate": _figures(self.cand, name),
                    "recall_diff": {
                        "estimate": (b - c) / n if n else None,
                        "lower": lower,
                        "upper": upper,
                        "n": n,
                        "candidate_only_right": b,
                        "production_only_right": c,
                    },
                }
            )
        axis = [*classes, OTHER]
        cols = [*axis, NONE]
        return {
            "classes": classes,
            "max_classes": self.max_classes,
            "declared": self.declared,
            "untracked": self.untracked,
            "other": OTHER,
            "no_prediction": NONE,
            "per_class": per_class,
            "macro": {
                "production": _macro([r["production"] for r in per_class]),
                "candidate": _macro([r["candidate"] for r in per_class]),
            },
            "confusion": {
                "rows": "label",
                "labels": axis,
                "columns": cols,
                "production": [[self.prod.get(y, {}).get(p, 0) for p in cols] for y in axis],
                "candidate": [[self.cand.get(y, {}).get(p, 0) for p in cols] for y in axis],
            },
            "interval": {
                "alpha": self.alpha,
                "alpha_per_class": level,
                "note": (
                    f"recall_diff is candidate minus production on the same labelled requests "
                    f"of each class; the intervals of all classes hold together at "
                    f"{1 - self.alpha:.0%} (alpha split evenly across {k} classes, Bonferroni),"
                    " anytime-valid. Precision and F1 are per model, without intervals."
                ),
            },
        }


def _figures(m: Matrix, name: str) -> ClassFigures:
    """Precision, recall and F1 of one class from a label x prediction matrix."""
    row = m.get(name, {})
    tp = row.get(name, 0)
    support = sum(row.values())
    predicted = sum(r.get(name, 0) for r in m.values())
    return {
        "true_positives": tp,
        "predicted": predicted,
        "precision": tp / predicted if predicted else None,
        "recall": tp / support if support else None,
        "f1": 2 * tp / (support + predicted) if support + predicted else None,
    }


def _macro(rows: Sequence[ClassFigures]) -> dict[str, float | None]:
    """Unweighted means over the tracked classes that have a value."""

    def mean(values: list[float | None]) -> float | None:
        vals = [float(v) for v in values if v is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "precision": mean([r["precision"] for r in rows]),
        "recall": mean([r["recall"] for r in rows]),
        "f1": mean([r["f1"] for r in rows]),
    }
