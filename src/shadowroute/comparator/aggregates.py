"""Mergeable scores of one (route, candidate) on one partition.

Everything is counts, sums, confidence-sequence states (``PairedMetric``) and latency
sketches, so the merge of per-partition states is the aggregate of the union of their records
(counts exactly; float sums up to summation order). ``to_dict``/``from_dict`` are the stored
and published form (SQLite row, ``<prefix>.scores`` message).

Window sums (per hour, or per configured window) keep the estimates per window; the anytime-
valid intervals are cumulative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from shadowroute.comparator import scoring
from shadowroute.comparator.classes import ClassCounts
from shadowroute.comparator.documents import (
    Audit,
    CandidateScores,
    EmbeddingSimilarity,
    JudgeFigures,
    LatencyMs,
    LatencySide,
    LlmCost,
    LlmScores,
    LlmSide,
    Mcnemar,
    MetricSummary,
    Outcomes,
    PairedT,
    Rates,
    SideOutcomes,
    SideRates,
    Window,
    WindowQuality,
)
from shadowroute.core.config import Price, Route
from shadowroute.core.monitor import DAY_MS, HOUR_MS
from shadowroute.core.stats.audit import mcnemar_exact, mcnemar_midp, t_sf
from shadowroute.core.stats.paired import MetricSpec, PairedMetric, metric_spec
from shadowroute.core.stats.policy import metric_alpha
from shadowroute.core.stats.sketch import Sketch

__all__ = [
    "WINDOW_MS",
    "AssessmentFacts",
    "CandidateState",
    "LabelledRow",
    "PairFacts",
    "PairRow",
    "new_candidate_state",
]

WINDOW_MS: Final = {"hour": HOUR_MS, "day": DAY_MS}
# The multiclass Brier score lies in [0, 2]: its paired difference is scaled by ½.
_BRIER: Final = MetricSpec("brier", higher_is_better=False, bounded=True, scale=0.5)


class PairFacts(Protocol):
    """What ``CandidateState.add_pairs`` reads of a pair record (``PairRow``, or the engine's
    decoded records)."""

    @property
    def ts(self) -> int: ...
    @property
    def prod_error(self) -> str | None: ...
    @property
    def cand_error(self) -> str | None: ...
    @property
    def prod_latency(self) -> float | None: ...
    @property
    def cand_latency(self) -> float | None: ...
    @property
    def prod_output(self) -> list[Any] | None: ...
    @property
    def cand_output(self) -> list[Any] | None: ...
    @property
    def prod_llm(self) -> dict[str, Any] | None: ...
    @property
    def cand_llm(self) -> dict[str, Any] | None: ...


class AssessmentFacts(Protocol):
    """What ``CandidateState.add_assessments`` reads of an assessment record
    (``core.assessments.AssessmentRecord``)."""

    @property
    def judge(self) -> str | None: ...
    @property
    def inconsistent(self) -> bool: ...
    @property
    def judge_error(self) -> str | None: ...
    @property
    def similarity(self) -> float | None: ...
    @property
    def similarity_error(self) -> str | None: ...
    @property
    def judge_calls(self) -> int: ...
    @property
    def similarity_calls(self) -> int: ...


_JUDGED: Final[dict[str, tuple[float, float]]] = {
    "win": (0.0, 1.0),
    "tie": (0.0, 0.0),
    "loss": (1.0, 0.0),
}
"""(production's value, candidate's value) of a judge result in the paired metric ``judge``:
d = win − loss (``core.judging.JUDGE_VALUES``)."""


@dataclass(slots=True)
class PairRow:
    """One pair record's facts for a candidate (outputs are per instance)."""

    ts: int
    prod_error: str | None
    cand_error: str | None
    prod_latency: float | None
    cand_latency: float | None
    prod_output: list[Any] | None
    cand_output: list[Any] | None
    prod_llm: dict[str, Any] | None = None
    cand_llm: dict[str, Any] | None = None


@dataclass(slots=True)
class LabelledRow:
    """One joined instance: both predictions, the label and the pair's timestamp."""

    ts: int
    prod: Any
    cand: Any
    label: Any


def _metric(name: str, alpha: float) -> PairedMetric:
    spec = _BRIER if name == "brier" else metric_spec(name)
    return PairedMetric(spec=spec, alpha=alpha)


def _add(target: dict[str, float], key: str, value: float) -> None:
    target[key] = target.get(key, 0.0) + value


def _flags(n: int, at: list[int]) -> npt.NDArray[np.float64]:
    """``n`` zeros with ones at the indices ``at``."""
    out = np.zeros(n, dtype=np.float64)
    if at:
        out[at] = 1.0
    return out


Column: TypeAlias = Sequence[float] | npt.NDArray[np.float64]
Prices: TypeAlias = tuple[Price | None, Price | None]
"""Production's and the candidate's token prices (``Model.price``)."""


@dataclass
class CandidateState:
    """The scores of one (route, candidate) on one partition. Create with
    ``new_candidate_state`` so every partition uses the same alphas."""

    route: str
    candidate: str
    task: str
    windows: tuple[str, ...]
    agreement: PairedMetric
    error_rate: PairedMetric
    timeout_rate: PairedMetric
    quality: dict[str, PairedMetric]
    availability: PairedMetric
    """Paired share of instances with a prediction, per sampled request (``_available``)."""
    latency_prod: Sketch = field(default_factory=Sketch)
    latency_cand: Sketch = field(default_factory=Sketch)
    counts: dict[str, float] = field(default_factory=dict)
    """pairs, instances, labelled, invalid, orphan_pairs, similarity_{n,sum}, delta_{n,abs,rel},
    mcnemar_b/c, ``labelled_no_prediction``, ``error:<side>:<reason>`` per model, and
    ``no_prediction:<side>:<reason>`` for pairs where a side has no prediction at all."""
    by_window: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    last_ts: int = 0
    """The newest pair timestamp scored (ms)."""
    revision: dict[str, Any] | None = None
    """The revision this evidence is about: ``id`` (``core.revision.revision_id``) and the
    ``candidate`` and ``production`` identities (url, version, revision); None in state
    written before revisions."""
    class_counts: ClassCounts | None = None
    """Classification: per-class counts of both models on the labelled pairs (``classes``)."""
    ttft_prod: Sketch = field(default_factory=Sketch)
    """``openai`` routes: time to first token (ms) of production's answers (``Side.llm``)."""
    ttft_cand: Sketch = field(default_factory=Sketch)
    judge: PairedMetric | None = None
    """Routes with a judge: the paired metric ``judge`` (d = win − loss per judged pair);
    its counts are ``judge:<result>``, ``judge_inconsistent``, ``judge_error:<reason>``,
    ``judge_calls``, and ``embed_sim_{n,sum}``, ``embed_error:<reason>``, ``embed_calls``."""

    # --- updates ----------------------------------------------------------------------------

    def _add_windows(self, ts: Sequence[int], columns: Mapping[str, Column]) -> None:
        """Add per-row values into their windows (one numpy pass per window size)."""
        if not ts:
            return
        t = np.asarray(ts, dtype=np.int64)
        cols = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
        for name in self.windows:
            ms = WINDOW_MS[name]
            starts, inv = np.unique(t - t % ms, return_inverse=True)
            wins = self.by_window.setdefault(name, {})
            sums = {k: np.bincount(inv, weights=v, minlength=starts.size) for k, v in cols.items()}
            for i, start in enumerate(starts.tolist()):
                cell = wins.setdefault(start, {})
                for k, v in sums.items():
                    _add(cell, k, float(v[i]))

    def add_pairs(self, rows: Sequence[PairFacts]) -> None:
        """Unlabelled scores: errors, latency, agreement, deltas, similarity (one pass over
        the rows, then one numpy update per score)."""
        if not rows:
            return
        task = self.task
        plain = task == "classification"  # two ints agree when equal, and have no delta
        numeric = task in ("regression", "probability")
        text = task == "text"
        ts: list[int] = []
        # Rows with an error or a timeout, by index (rare: the flag columns are built at once).
        prod_err: list[int] = []
        cand_err: list[int] = []
        prod_to: list[int] = []
        cand_to: list[int] = []
        lp: list[float] = []
        lc: list[float] = []
        tp: list[float] = []  # TTFTs (``openai`` routes)
        tc: list[float] = []
        errors: dict[str, int] = {}
        avail_p: list[float] = []
        avail_c: list[float] = []
        agreed: list[float] = []
        agree_ts: list[int] = []
        instances = invalid = 0
        c = self.counts
        for i, r in enumerate(rows):
            t = r.ts
            ts.append(t)
            e = r.prod_error
            if e is not None and e != "abandoned":  # (the client went away: not production's)
                prod_err.append(i)
                if e == "timeout":
                    prod_to.append(i)
                k = f"error:production:{e}"
                errors[k] = errors.get(k, 0) + 1
            e = r.cand_error
            if e is not None and e != "not_mirrored":  # (never sent: the proxy's limit)
                cand_err.append(i)
                if e == "timeout":
                    cand_to.append(i)
                k = f"error:candidate:{e}"
                errors[k] = errors.get(k, 0) + 1
            if r.prod_latency is not None:
                lp.append(r.prod_latency)
            if r.cand_latency is not None:
                lc.append(r.cand_latency)
            pl, cl = r.prod_llm, r.cand_llm
            if pl is not None or cl is not None:
                _add_llm(c, pl, cl, tp, tc)
            po, co = r.prod_output, r.cand_output
            n = len(po) if po else (len(co) if co else 1)
            ap = 0.0 if r.prod_error is not None else _available(po, n)
            ac = 0.0 if e is not None else _available(co, n)
            if ap == 0.0:
                k = f"no_prediction:production:{r.prod_error or 'no_prediction'}"
                errors[k] = errors.get(k, 0) + 1
            if ac == 0.0:
                k = f"no_prediction:candidate:{e or 'no_prediction'}"
                errors[k] = errors.get(k, 0) + 1
            # Neither the proxy's limit nor a client gone is evidence about either model.
            if e != "not_mirrored" and r.prod_error != "abandoned":
                avail_p.append(ap)
                avail_c.append(ac)
            if po is None or co is None:
                continue
            for p, q in zip(po, co, strict=False):
                instances += 1
                if plain and type(p) is int and type(q) is int:
                    agreed.append(1.0 if p == q else 0.0)
                    agree_ts.append(t)
                    continue
                a = scoring.agree(task, p, q)
                if a is None:
                    invalid += 1
                    continue
                agreed.append(1.0 if a else 0.0)
                agree_ts.append(t)
                if numeric:
                    d = scoring.delta(task, p, q)
                    if d is not None:
                        _add(c, "delta_n", 1)
                        _add(c, "delta_abs", d[0])
                        _add(c, "delta_rel", d[1])
                elif text:
                    sim = scoring.similarity(p, q)
                    if sim is not None:
                        _add(c, "similarity_n", 1)
                        _add(c, "similarity_sum", sim)
        n_rows = len(rows)
        pe, ce, pt, ct = (_flags(n_rows, at) for at in (prod_err, cand_err, prod_to, cand_to))
        self.error_rate.update(pe, ce)
        self.timeout_rate.update(pt, ct)
        self.availability.update(avail_p, avail_c)
        self.latency_prod.add_many(lp)
        self.latency_cand.add_many(lc)
        if tp:
            self.ttft_prod.add_many(tp)
        if tc:
            self.ttft_cand.add_many(tc)
        self.last_ts = max(self.last_ts, max(ts))
        _add(c, "pairs", len(rows))
        for k, n in errors.items():
            _add(c, k, n)
        _add(c, "instances", instances)
        if invalid:
            _add(c, "invalid", invalid)
        self._add_windows(
            ts,
            {
                "pairs": np.ones(n_rows),
                "prod_error": pe,
                "cand_error": ce,
                "prod_timeout": pt,
                "cand_timeout": ct,
            },
        )
        agree = np.asarray(agreed, dtype=np.float64)
        self._add_windows(agree_ts, {"agree_n": np.ones(agree.size), "agree": agree})
        self.agreement.update_rate(agree)

    def add_labelled(self, rows: Sequence[LabelledRow], classes: Sequence[str] | None) -> None:
        """Quality of both models against ground truth, and their paired differences."""
        names = scoring.LABELLED_METRICS[self.task]
        prod_vals: list[tuple[float, ...]] = []
        cand_vals: list[tuple[float, ...]] = []
        ts: list[int] = []
        c = self.counts
        task = self.task
        quality = scoring.quality
        worst = scoring.worst_quality(task)
        per_class = self.class_counts
        # per-class counts: one dict increment per row here, class names once per distinct
        # (label, production, candidate) after the loop
        tally: dict[tuple[Any, Any, Any], int] = {}
        for r in rows:
            label = r.label
            qp = quality(task, r.prod, label, classes)
            qc = quality(task, r.cand, label, classes)
            missed = False
            if qp and not qc:
                # No usable prediction (none, NaN, or not fitting the task) where production
                # has one: the candidate's miss, scored as its worst (docs/comparator.md).
                _add(c, "labelled_no_prediction", 1)
                qc = worst
                missed = True
            if not qp or not qc:
                _add(c, "invalid_labelled", 1)
                continue
            if per_class is not None:
                k = (label, r.prod, None if missed else r.cand)
                tally[k] = tally.get(k, 0) + 1
            prod_vals.append(qp)
            cand_vals.append(qc)
            ts.append(r.ts)
        if tally and per_class is not None:
            _count_classes(per_class, tally, classes)
        if not prod_vals:
            return
        p = np.asarray(prod_vals, dtype=np.float64)
        q = np.asarray(cand_vals, dtype=np.float64)
        _add(c, "labelled", len(ts))
        if names[0] in ("accuracy", "exact_match"):
            _add(c, "mcnemar_b", float(np.sum(q[:, 0] > p[:, 0])))
            _add(c, "mcnemar_c", float(np.sum(p[:, 0] > q[:, 0])))
        cols: dict[str, Column] = {"labelled": np.ones(len(ts))}
        for i, name in enumerate(names):
            cols[f"{name}.prod"] = p[:, i]
            cols[f"{name}.cand"] = q[:, i]
            self.quality[name].update(p[:, i], q[:, i])
        self._add_windows(ts, cols)

    def add_assessments(self, rows: Sequence[AssessmentFacts]) -> None:
        """Judge results and embedding similarities of assessed pairs (in any order: sums)."""
        c = self.counts
        prod: list[float] = []
        cand: list[float] = []
        for r in rows:
            if r.judge is not None:
                _add(c, f"judge:{r.judge}", 1)
                vals = _JUDGED.get(r.judge)
                if vals is not None:
                    prod.append(vals[0])
                    cand.append(vals[1])
                if r.inconsistent:
                    _add(c, "judge_inconsistent", 1)
                if r.judge_error is not None:
                    _add(c, f"judge_error:{r.judge_error}", 1)
            if r.judge_calls:
                _add(c, "judge_calls", r.judge_calls)
            if r.similarity is not None:
                _add(c, "embed_sim_n", 1)
                _add(c, "embed_sim_sum", r.similarity)
            if r.similarity_error is not None:
                _add(c, f"embed_error:{r.similarity_error}", 1)
            if r.similarity_calls:
                _add(c, "embed_calls", r.similarity_calls)
        if prod and self.judge is not None:
            self.judge.update(prod, cand)

    def add_orphans(self, n: int) -> None:
        _add(self.counts, "orphan_pairs", n)

    # --- merge and serialisation ------------------------------------------------------------

    def merge(self, other: CandidateState) -> CandidateState:
        if (other.route, other.candidate, other.task) != (self.route, self.candidate, self.task):
            raise ValueError("cannot merge scores of different routes, candidates or tasks")
        counts = dict(self.counts)
        for k, v in other.counts.items():
            _add(counts, k, v)
        by_window: dict[str, dict[int, dict[str, float]]] = {}
        for src in (self.by_window, other.by_window):
            for name, wins in src.items():
                dst = by_window.setdefault(name, {})
                for start, sums in wins.items():
                    cell = dst.setdefault(start, {})
                    for k, v in sums.items():
                        _add(cell, k, v)
        return CandidateState(
            route=self.route,
            candidate=self.candidate,
            task=self.task,
            windows=self.windows,
            agreement=self.agreement.merge(other.agreement),
            error_rate=self.error_rate.merge(other.error_rate),
            timeout_rate=self.timeout_rate.merge(other.timeout_rate),
            quality={k: m.merge(other.quality[k]) for k, m in self.quality.items()},
            availability=self.availability.merge(other.availability),
            latency_prod=self.latency_prod.merge(other.latency_prod),
            latency_cand=self.latency_cand.merge(other.latency_cand),
            counts=counts,
            by_window=by_window,
            last_ts=max(self.last_ts, other.last_ts),
            revision=self.revision if self.revision is not None else other.revision,
            class_counts=_merge_classes(self.class_counts, other.class_counts),
            ttft_prod=self.ttft_prod.merge(other.ttft_prod),
            ttft_cand=self.ttft_cand.merge(other.ttft_cand),
            judge=_merge_judge(self.judge, other.judge),
        )

    def to_dict(self) -> dict[str, Any]:
        out = self._to_dict()
        if self.ttft_prod.count or self.ttft_cand.count:
            # ``openai`` routes only: other routes' states keep their stored form, byte for byte
            out["ttft_prod"] = self.ttft_prod.to_dict()
            out["ttft_cand"] = self.ttft_cand.to_dict()
        return out

    def _to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "candidate": self.candidate,
            "task": self.task,
            "windows": list(self.windows),
            "agreement": self.agreement.to_dict(),
            "error_rate": self.error_rate.to_dict(),
            "timeout_rate": self.timeout_rate.to_dict(),
            "quality": {k: m.to_dict() for k, m in self.quality.items()},
            "availability": self.availability.to_dict(),
            "latency_prod": self.latency_prod.to_dict(),
            "latency_cand": self.latency_cand.to_dict(),
            "counts": dict(sorted(self.counts.items())),
            "last_ts": self.last_ts,
            "by_window": {
                name: [[start, sums] for start, sums in sorted(wins.items())]
                for name, wins in self.by_window.items()
            },
            "revision": self.revision,
            "classes": None if self.class_counts is None else self.class_counts.to_dict(),
            # only with a judge: states without one keep their serialised form
            **({"judge": self.judge.to_dict()} if self.judge is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CandidateState:
        error_rate = PairedMetric.from_dict(data["error_rate"])
        avail = data.get("availability")  # absent in states stored before it was kept
        per_class = data.get("classes")  # absent in states stored before per-class views
        ttft_p, ttft_c = data.get("ttft_prod"), data.get("ttft_cand")  # openai routes only
        judge = data.get("judge")  # absent in states stored before the judge
        return cls(
            route=str(data["route"]),
            candidate=str(data["candidate"]),
            task=str(data["task"]),
            windows=tuple(data["windows"]),
            agreement=PairedMetric.from_dict(data["agreement"]),
            error_rate=error_rate,
            timeout_rate=PairedMetric.from_dict(data["timeout_rate"]),
            quality={k: PairedMetric.from_dict(v) for k, v in data["quality"].items()},
            availability=(
                _metric("availability", error_rate.alpha)
                if avail is None
                else PairedMetric.from_dict(avail)
            ),
            latency_prod=Sketch.from_dict(data["latency_prod"]),
            latency_cand=Sketch.from_dict(data["latency_cand"]),
            counts={str(k): float(v) for k, v in data["counts"].items()},
            by_window={
                name: {int(s): {str(k): float(v) for k, v in sums.items()} for s, sums in wins}
                for name, wins in data["by_window"].items()
            },
            last_ts=int(data.get("last_ts", 0)),
            revision=data.get("revision"),
            class_counts=None if per_class is None else ClassCounts.from_dict(per_class),
            ttft_prod=Sketch() if ttft_p is None else Sketch.from_dict(ttft_p),
            ttft_cand=Sketch() if ttft_c is None else Sketch.from_dict(ttft_c),
            judge=None if judge is None else PairedMetric.from_dict(judge),
        )

    # --- reading ----------------------------------------------------------------------------

    def count(self, key: str) -> int:
        return int(self.counts.get(key, 0.0))

    @property
    def pairs(self) -> int:
        return self.count("pairs")

    @property
    def labelled(self) -> int:
        return self.count("labelled")

    def metrics(self) -> dict[str, PairedMetric]:
        """Every CS-backed metric by name, as ``decide`` takes them."""
        return {
            "agreement": self.agreement,
            "error_rate": self.error_rate,
            "timeout_rate": self.timeout_rate,
            "availability": self.availability,
            **self.quality,
            **({"judge": self.judge} if self.judge is not None else {}),
        }

    def scores(self, prices: Prices | None = None) -> CandidateScores:
        """All scores, JSON-ready: cumulative and per window; ``prices`` (production's,
        the candidate's) give an ``openai`` route's cost per request."""
        c = self.counts
        pairs = max(self.pairs, 1)
        out: CandidateScores = {
            "pairs": self.pairs,
            "instances": self.count("instances"),
            "labelled": self.labelled,
            "invalid_instances": self.count("invalid"),
            "invalid_labelled": self.count("invalid_labelled"),
            "orphan_pairs": self.count("orphan_pairs"),
            "agreement": _summary(self.agreement),
            "error_rate": _summary(self.error_rate),
            "timeout_rate": _summary(self.timeout_rate),
            "availability": _summary(self.availability),
            "outcomes": self._outcomes(),
            "rates": self._rates(pairs),
            "latency_ms": self._latency(),
            "quality": {k: _summary(m) for k, m in self.quality.items()},
            "audit": self._audit(),
            "windows": self._windows(),
        }
        if self.task in ("regression", "probability"):
            n = c.get("delta_n", 0.0)
            out["output_delta"] = {
                "n": int(n),
                "mean_abs": _finite(c.get("delta_abs", 0.0) / n) if n else None,
                "mean_rel": _finite(c.get("delta_rel", 0.0) / n) if n else None,
            }
        if self.class_counts is not None:
            out["classes"] = self.class_counts.view()
        if self.count("llm:n:production") or self.count("llm:n:candidate"):
            out["llm"] = self.llm_scores(prices)
        if self.task == "text":
            n = c.get("similarity_n", 0.0)
            out["similarity"] = {
                "n": int(n),
                "mean": _finite(c.get("similarity_sum", 0.0) / n) if n else None,
            }
        judge, embedding = self.judge_figures(), self.embedding_figures()
        if judge is not None:
            out["judge"] = judge
        if embedding is not None:
            out["embedding_similarity"] = embedding
        return out

    def mean_costs(self, prices: Prices | None) -> tuple[float, float, int] | None:
        """Mean cost per request of production and the candidate, over the pairs where both
        sides report their tokens, and those pairs; None without both prices or pairs."""
        n = self.count("llm:cost_pairs")
        if prices is None or prices[0] is None or prices[1] is None or n == 0:
            return None
        c = self.counts
        prod = prices[0].cost(c["llm:cost_in:production"], c["llm:cost_out:production"]) / n
        cand = prices[1].cost(c["llm:cost_in:candidate"], c["llm:cost_out:candidate"]) / n
        return prod, cand, n

    def llm_scores(self, prices: Prices | None = None) -> LlmScores:
        """``openai`` routes: TTFT, ITL, tokens and cost per side (``Side.llm``)."""
        c = self.counts

        def side(name: str) -> LlmSide:
            itl_n = c.get(f"llm:itl_n:{name}", 0.0)
            n_in = c.get(f"llm:tokens_in_n:{name}", 0.0)
            n_out = c.get(f"llm:tokens_out_n:{name}", 0.0)
            return {
                "answers": self.count(f"llm:n:{name}"),
                "itl_ms": _finite(c.get(f"llm:itl_sum:{name}", 0.0) / itl_n) if itl_n else None,
                "itl_n": int(itl_n),
                "tokens_in": int(c.get(f"llm:tokens_in:{name}", 0.0)),
                "tokens_out": int(c.get(f"llm:tokens_out:{name}", 0.0)),
                "mean_tokens_in": _finite(c.get(f"llm:tokens_in:{name}", 0.0) / n_in)
                if n_in
                else None,
                "mean_tokens_out": _finite(c.get(f"llm:tokens_out:{name}", 0.0) / n_out)
                if n_out
                else None,
                "tokens_counted": self.count(f"llm:tokens_counted:{name}"),
            }

        prod, cand = _latency_side(self.ttft_prod), _latency_side(self.ttft_cand)
        costs = self.mean_costs(prices)
        cost: LlmCost = {
            "pairs": self.count("llm:cost_pairs"),
            "production": None if costs is None else _finite(costs[0]),
            "candidate": None if costs is None else _finite(costs[1]),
            "ratio": None if costs is None or not costs[0] else _finite(costs[1] / costs[0]),
        }
        return {
            "ttft_ms": {
                "production": prod,
                "candidate": cand,
                "ratio": {
                    "p50": _ratio(prod["p50"], cand["p50"]),
                    "p90": _ratio(prod["p90"], cand["p90"]),
                    "p99": _ratio(prod["p99"], cand["p99"]),
                },
            },
            "production": side("production"),
            "candidate": side("candidate"),
            "cost": cost,
        }

    def judge_figures(self) -> JudgeFigures | None:
        """The judge's figures (routes with a judge)."""
        return None if self.judge is None else self._judge_figures()

    def embedding_figures(self) -> EmbeddingSimilarity | None:
        """The embedding similarity's figures, once measured."""
        if any(k.startswith(("embed_sim_n", "embed_error:", "embed_calls")) for k in self.counts):
            return self._embedding_similarity()
        return None

    def _judge_figures(self) -> JudgeFigures:
        assert self.judge is not None
        failures = _by_reason(self.counts, "judge_error:")
        return {
            "metric": _summary(self.judge),
            "wins": self.count("judge:win"),
            "ties": self.count("judge:tie"),
            "losses": self.count("judge:loss"),
            "unparseable": self.count("judge:unparseable"),
            "inconsistent": self.count("judge_inconsistent"),
            "failed": self.count("judge:failed"),
            "failures": failures,
            "calls": self.count("judge_calls"),
        }

    def _embedding_similarity(self) -> EmbeddingSimilarity:
        c = self.counts
        n = c.get("embed_sim_n", 0.0)
        failures = _by_reason(c, "embed_error:")
        return {
            "n": int(n),
            "mean": _finite(c.get("embed_sim_sum", 0.0) / n) if n else None,
            "failed": sum(failures.values()),
            "failures": failures,
            "calls": self.count("embed_calls"),
        }

    def _outcomes(self) -> Outcomes:
        """Per side: pairs with a prediction, and the reason of each without one."""
        out = {}
        for side in ("production", "candidate"):
            head = f"no_prediction:{side}:"
            reasons = {k[len(head) :]: int(v) for k, v in self.counts.items() if k.startswith(head)}
            one: SideOutcomes = {
                "with_prediction": self.pairs - sum(reasons.values()),
                "no_prediction": dict(sorted(reasons.items())),
            }
            out[side] = one
        out["candidate"]["labelled_no_prediction"] = self.count("labelled_no_prediction")
        return {"production": out["production"], "candidate": out["candidate"]}

    def _rates(self, pairs: int) -> Rates:
        out: dict[str, SideRates] = {}
        for side in ("production", "candidate"):
            reasons = {
                k.split(":", 2)[2]: int(v)
                for k, v in self.counts.items()
                if k.startswith(f"error:{side}:")
            }
            total = sum(reasons.values())
            out[side] = {
                "error": total / pairs if self.pairs else None,
                "timeout": reasons.get("timeout", 0) / pairs if self.pairs else None,
                "extract_failed": reasons.get("extract_failed", 0) / pairs if self.pairs else None,
                "errors_by_reason": dict(sorted(reasons.items())),
            }
        return {"production": out["production"], "candidate": out["candidate"]}

    def _latency(self) -> LatencyMs:
        prod, cand = _latency_side(self.latency_prod), _latency_side(self.latency_cand)

        def ratio(a: float | None, b: float | None) -> float | None:
            return _finite(b / a) if a and b is not None else None

        return {
            "production": prod,
            "candidate": cand,
            "ratio": {
                "p50": ratio(prod["p50"], cand["p50"]),
                "p90": ratio(prod["p90"], cand["p90"]),
                "p99": ratio(prod["p99"], cand["p99"]),
            },
        }

    def _audit(self) -> Audit:
        """Fixed-horizon figures for an offline audit (not anytime-valid)."""
        paired_t = {k: _paired_t(m) for k, m in self.quality.items()}
        note = (
            "fixed-horizon tests, valid once at a sample size fixed in advance; the Wilcoxon "
            "signed-rank test needs every difference, so it is not kept in mergeable state"
        )
        names = scoring.LABELLED_METRICS[self.task]
        if names[0] not in ("accuracy", "exact_match"):
            return {"paired_t": paired_t, "wilcoxon": None, "note": note}
        b, c = self.count("mcnemar_b"), self.count("mcnemar_c")
        mcnemar: Mcnemar = {
            "metric": names[0],
            "b_candidate_only_right": b,
            "c_production_only_right": c,
            "p_exact": mcnemar_exact(b, c),
            "p_midp": mcnemar_midp(b, c),
        }
        return {"mcnemar": mcnemar, "paired_t": paired_t, "wilcoxon": None, "note": note}

    def _windows(self) -> dict[str, list[Window]]:
        names = scoring.LABELLED_METRICS[self.task]
        out: dict[str, list[Window]] = {}
        for wname, wins in sorted(self.by_window.items()):
            series = []
            for start, s in sorted(wins.items()):
                n, lab = s.get("pairs", 0.0), s.get("labelled", 0.0)
                an = s.get("agree_n", 0.0)
                item: Window = {
                    "start": start,
                    "pairs": int(n),
                    "labelled": int(lab),
                    "agreement": s.get("agree", 0.0) / an if an else None,
                    "error_rate": {
                        "production": s.get("prod_error", 0.0) / n if n else None,
                        "candidate": s.get("cand_error", 0.0) / n if n else None,
                    },
                    "timeout_rate": {
                        "production": s.get("prod_timeout", 0.0) / n if n else None,
                        "candidate": s.get("cand_timeout", 0.0) / n if n else None,
                    },
                }
                # the task's labelled metrics are further fields of the window (Window's doc)
                per_metric = cast(dict[str, WindowQuality | None], item)
                for name in names:
                    if lab:
                        pm, cm = s.get(f"{name}.prod", 0.0) / lab, s.get(f"{name}.cand", 0.0) / lab
                        sign = 1.0 if metric_spec(name).higher_is_better else -1.0
                        per_metric[name] = {
                            "production": pm,
                            "candidate": cm,
                            "diff": sign * (cm - pm),
                        }
                    else:
                        per_metric[name] = None
                series.append(item)
            out[wname] = series
        return out


def _ratio(a: float | None, b: float | None) -> float | None:
    """``b / a``: a candidate's figure over production's."""
    return _finite(b / a) if a and b is not None else None


def _add_llm(
    c: dict[str, float],
    prod: dict[str, Any] | None,
    cand: dict[str, Any] | None,
    tp: list[float],
    tc: list[float],
) -> None:
    """One pair's ``llm`` facts (``Side.llm``) into the sums, and its TTFTs into ``tp``/``tc``."""
    for name, facts, ttfts in (("production", prod, tp), ("candidate", cand, tc)):
        if facts is None:
            continue
        _add(c, f"llm:n:{name}", 1)
        t = facts.get("ttft_ms")
        if t is not None:
            ttfts.append(t)
        itl = facts.get("itl_ms")
        if itl is not None:
            _add(c, f"llm:itl_n:{name}", 1)
            _add(c, f"llm:itl_sum:{name}", itl)
        for key in ("tokens_in", "tokens_out"):
            v = facts.get(key)
            if v is not None:
                _add(c, f"llm:{key}_n:{name}", 1)
                _add(c, f"llm:{key}:{name}", v)
        if facts.get("tokens_counted"):
            _add(c, f"llm:tokens_counted:{name}", 1)
    if prod is None or cand is None:
        return
    pin, pout = prod.get("tokens_in"), prod.get("tokens_out")
    cin, cout = cand.get("tokens_in"), cand.get("tokens_out")
    if pin is not None and pout is not None and cin is not None and cout is not None:
        _add(c, "llm:cost_pairs", 1)
        _add(c, "llm:cost_in:production", pin)
        _add(c, "llm:cost_out:production", pout)
        _add(c, "llm:cost_in:candidate", cin)
        _add(c, "llm:cost_out:candidate", cout)


def _available(out: list[Any] | None, n: int) -> float:
    """The share of a request's ``n`` instances with a prediction in ``out``."""
    if not out:
        return 0.0
    if n == 1:
        return 0.0 if out[0] is None else 1.0
    k = 0
    for v in out[:n]:
        if v is not None:
            k += 1
    return k / n


def _count_classes(
    counts: ClassCounts, tally: dict[tuple[Any, Any, Any], int], classes: Sequence[str] | None
) -> None:
    """Labelled classification instances into the per-class counts: (label, production's
    prediction, the candidate's or None for its miss) -> instances, in the order first seen
    (the rows the accuracy comparison scores, and only those; right means the same class
    name, as ``scoring.quality`` decides)."""
    name = scoring.class_name
    for (label, prod, cand), n in tally.items():
        y = name(label, classes)
        p = name(prod, classes)
        if y is None or p is None:
            continue
        q = None if cand is None else name(cand, classes)
        counts.add(y, p, q, p == y, q == y, n)


def _by_reason(counts: Mapping[str, float], head: str) -> dict[str, int]:
    return {k[len(head) :]: int(v) for k, v in sorted(counts.items()) if k.startswith(head)}


def _merge_judge(a: PairedMetric | None, b: PairedMetric | None) -> PairedMetric | None:
    if a is None or b is None:
        return a if b is None else b
    return a.merge(b)


def _merge_classes(a: ClassCounts | None, b: ClassCounts | None) -> ClassCounts | None:
    if a is None or b is None:
        return a if b is None else b
    return a.merge(b)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _summary(m: PairedMetric) -> MetricSummary:
    s = m.summary()

    def num(key: str) -> float | None:
        v = s[key]
        return _finite(v) if isinstance(v, float) else v

    return {
        "estimate": num("estimate"),
        "lower": num("lower"),
        "upper": num("upper"),
        "n": m.n,
        "prod_mean": num("prod_mean"),
        "cand_mean": num("cand_mean"),
        "alpha": m.alpha,
    }


def _latency_side(sk: Sketch) -> LatencySide:
    def q(p: float) -> float | None:
        return _finite(sk.quantile(p)) if sk.count else None

    return {"n": sk.count, "p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}


def _paired_t(m: PairedMetric) -> PairedT:
    """Paired t from n, Σd, Σd² (two-sided)."""
    n = m.n
    if n < 2:
        return {"n": n, "t": None, "p": None}
    mean = m.diff_sum / n
    var = max((m.diff_sq - n * mean * mean) / (n - 1), 0.0)
    if var == 0.0:
        return {"n": n, "t": None, "p": None if mean == 0.0 else 0.0}
    t = mean / math.sqrt(var / n)
    return {"n": n, "t": t, "p": min(1.0, 2.0 * t_sf(abs(t), n - 1.0))}


def new_candidate_state(route: Route, candidate: str, windows: Sequence[str]) -> CandidateState:
    """An empty state whose metrics carry the policy's alpha shares (``metric_alpha``)."""
    shares = metric_alpha(route.policy, route.task)
    alpha = route.policy.alpha

    def make(name: str) -> PairedMetric:
        return _metric(name, shares.get(name, alpha))

    return CandidateState(
        route=route.name,
        candidate=candidate,
        task=route.task,
        windows=tuple(windows),
        agreement=make("agreement"),
        error_rate=make("error_rate"),
        timeout_rate=make("timeout_rate"),
        quality={name: make(name) for name in scoring.LABELLED_METRICS[route.task]},
        availability=make("availability"),
        class_counts=(
            ClassCounts.create(alpha, route.classes, route.max_classes)
            if route.task == "classification"
            else None
        ),
        judge=make("judge") if route.judge is not None else None,
    )
