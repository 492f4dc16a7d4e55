"""The read side's JSON documents, declared once as TypedDicts.

The comparator builds these (``CandidateState.scores``, ``ClassCounts.view``,
``ProductionState.summary``, the ``Reader``'s decision, scores and production documents), mypy
checks the builders against them, and ``shadowroute.api.openapi`` generates its
``components.schemas`` from them (``shadowroute.api.typed_schema``). A field's description is its
``Annotated`` string; ``NotRequired`` fields are left out of ``required``; ``X | None`` is
nullable. Declarations only: nothing here runs per record.

Parts built in ``core`` and shown as they are (a drift field's distances, production's
degradation test, the label delay quantiles) are ``JsonObject``: documented as objects.

No ``from __future__ import annotations`` here: the TypedDicts' ``NotRequired`` must be seen
when the class is made (``__required_keys__``), so leaves are declared before what uses them.
"""

from collections.abc import Mapping
from typing import Annotated, Literal, NotRequired, TypedDict

__all__ = [
    "COMPONENTS",
    "AssessorFigures",
    "Audit",
    "CandidateScores",
    "ClassFigures",
    "ClassRow",
    "ClassViews",
    "Confusion",
    "CoveragePoint",
    "Decision",
    "DriftAuto",
    "EmbeddingSimilarity",
    "ErrorSummary",
    "EvidenceRevision",
    "FlaggerCall",
    "GateAnswer",
    "History",
    "HistoryEntry",
    "Identity",
    "Integrity",
    "JsonObject",
    "JudgeFigures",
    "LabelsWaiting",
    "LatencyMs",
    "LatencySide",
    "Lineage",
    "LlmCost",
    "LlmScores",
    "LlmSide",
    "MetricEvidence",
    "MetricSummary",
    "ModelAge",
    "Needed",
    "NoiseFloor",
    "Overview",
    "OverviewCandidate",
    "Production",
    "ProductionSummary",
    "QualityPoint",
    "RecallDiff",
    "RegistryVersion",
    "RouteInfo",
    "Routes",
    "Scores",
    "SideOutcomes",
    "SideRates",
    "Window",
]

JsonObject = dict[str, object]
"""A JSON object shown as it is (its fields documented elsewhere)."""

Num = float | None
"""A figure; null when there is nothing to compute it from (or it is not finite)."""


# --- decisions ---------------------------------------------------------------------------------


class Needed(TypedDict):
    more: Annotated[int | None, "null: cannot estimate"]
    total: int | None
    unit: Literal["pairs", "labelled pairs"]
    estimate: Literal[True]
    why: NotRequired[Annotated[str, "Why it cannot be estimated"]]


class ErrorSummary(TypedDict):
    reason: Annotated[str, "e.g. http_4xx, timeout, connect"]
    count: int
    of: int
    hint: str | None


class MetricEvidence(TypedDict):
    estimate: Num
    lower: Annotated[Num, "Anytime-valid lower bound"]
    upper: Annotated[Num, "Anytime-valid upper bound"]
    n: int
    threshold: Num
    status: Literal["pass", "fail", "inconclusive"]
    needed: NotRequired[
        Annotated[
            Needed,
            "Only when inconclusive: an ESTIMATE of the further observations needed before "
            "the interval excludes the threshold, if the effect and variance stay as now",
        ]
    ]
    errors: NotRequired[
        Annotated[
            ErrorSummary,
            "error_rate only, when it does not pass: the candidate's most frequent error "
            "reason, its count over the pairs, and a plain-words hint",
        ]
    ]


class Identity(TypedDict):
    url: str | None
    version: str | None
    revision: str | None


class EvidenceRevision(TypedDict):
    id: Annotated[str, "12 hex digits naming (candidate identity, production identity)"]
    candidate: Identity | None
    production: Identity | None


class NoiseBounds(TypedDict):
    estimate: Num
    lower: Num
    upper: Num
    n: int


class NoiseFloor(TypedDict):
    candidate: str
    pairs: int
    labelled: NotRequired[int]
    disagreement: Num
    metrics: dict[str, NoiseBounds]
    note: NotRequired[str]


class Integrity(TypedDict):
    """Evidence the comparator refused to take at face value (all routes)"""

    duplicate_pairs: int
    duplicate_ids: int
    duplicate_labels: int
    conflicting_labels: int


class Previous(TypedDict):
    """On a revision change: the old revision's last verdict"""

    revision: Mapping[str, object] | None
    verdict: str | None
    pairs: NotRequired[int | None]
    labelled: NotRequired[int | None]


class Decision(TypedDict):
    route: str
    candidate: str
    verdict: Literal["promote", "hold", "reject"]
    reasons: list[str]
    metrics: dict[str, MetricEvidence]
    pairs: int
    labelled: int
    as_of: Annotated[int | None, "When it was computed (ms, the newest record's time)"]
    revision: Annotated[
        EvidenceRevision | None,
        "The revision the evidence is about (null before any pair, or for evidence recorded "
        "before revisions were tracked)",
    ]
    asked_revision: NotRequired[
        Annotated[
            str,
            "Only when ?revision= named another revision: what was asked (the verdict is then "
            "hold, and the reason says which revision the evidence is for)",
        ]
    ]
    noise: NotRequired[
        Annotated[bool, "True for a noise candidate (production against itself): always hold"]
    ]
    noise_floor: NotRequired[
        Annotated[
            NoiseFloor | None,
            "The route's noise candidate, to read this candidate's figures against: "
            "disagreement and the paired differences of the decision's metrics",
        ]
    ]
    labels_waiting: NotRequired[
        Annotated[int, "Labels of this route waiting for their pair (see production)"]
    ]
    integrity: NotRequired[Integrity]
    event: NotRequired[
        Annotated[
            Literal["verdict", "revision_change"],
            "History entries only: what changed (revision_change: the evidence restarts)",
        ]
    ]
    previous: NotRequired[Previous]


class HistoryEntry(TypedDict):
    route: str
    candidate: str
    verdict: str
    at: Annotated[int, "When the change was recorded (ms)"]
    as_of: int | None
    reasons: list[str]
    metrics: dict[str, MetricEvidence]
    pairs: int | None
    labelled: int | None
    event: Literal["verdict", "revision_change"]
    revision: EvidenceRevision | None
    previous: NotRequired[Previous]


class History(TypedDict):
    route: str
    candidate: str
    history: list[HistoryEntry]


# --- scores ------------------------------------------------------------------------------------


class MetricSummary(TypedDict):
    """A paired difference (candidate minus production) with its anytime-valid interval"""

    estimate: Num
    lower: Num
    upper: Num
    n: int
    prod_mean: Num
    cand_mean: Num
    alpha: float


class SideOutcomes(TypedDict):
    with_prediction: int
    no_prediction: Annotated[dict[str, int], "Pairs without a prediction, by reason"]
    labelled_no_prediction: NotRequired[int]


class Outcomes(TypedDict):
    production: SideOutcomes
    candidate: SideOutcomes


class SideRates(TypedDict):
    error: Num
    timeout: Num
    extract_failed: Num
    errors_by_reason: dict[str, int]


class Rates(TypedDict):
    production: SideRates
    candidate: SideRates


class LatencySide(TypedDict):
    n: int
    p50: Num
    p90: Num
    p99: Num


class LatencyRatio(TypedDict):
    p50: Num
    p90: Num
    p99: Num


class LatencyMs(TypedDict):
    production: LatencySide
    candidate: LatencySide
    ratio: Annotated[LatencyRatio, "Candidate over production"]


class LlmSide(TypedDict):
    answers: Annotated[int, "Answers with streaming facts (a prediction on an openai route)"]
    itl_ms: Annotated[Num, "Mean inter-token latency over the answers that have one"]
    itl_n: int
    tokens_in: Annotated[int, "Sum of input (prompt) tokens"]
    tokens_out: Annotated[int, "Sum of output (completion) tokens"]
    mean_tokens_in: Num
    mean_tokens_out: Num
    tokens_counted: Annotated[
        int, "Answers whose tokens were counted (no usage from the server), not reported"
    ]


class LlmCost(TypedDict):
    pairs: Annotated[int, "Pairs where both sides report their tokens in and out"]
    production: Annotated[Num, "Production's mean cost per request (its price's units)"]
    candidate: Annotated[Num, "The candidate's mean cost per request"]
    ratio: Annotated[Num, "Candidate over production"]


class LlmScores(TypedDict):
    ttft_ms: Annotated[LatencyMs, "Time to first token per side, and their ratios"]
    production: LlmSide
    candidate: LlmSide
    cost: Annotated[LlmCost, "From the models' price (null without a price on both)"]


class Mcnemar(TypedDict):
    metric: str
    b_candidate_only_right: int
    c_production_only_right: int
    p_exact: float
    p_midp: float


class PairedT(TypedDict):
    n: int
    t: Num
    p: Num


class Audit(TypedDict):
    """Fixed-horizon figures for an offline audit (not anytime-valid)"""

    mcnemar: NotRequired[Mcnemar]
    paired_t: dict[str, PairedT]
    wilcoxon: None
    note: str


class SidePair(TypedDict):
    production: Num
    candidate: Num


class WindowQuality(TypedDict):
    production: float
    candidate: float
    diff: Annotated[float, "Signed so that positive means the candidate is better"]


class Window(TypedDict):
    """One window of a series; each labelled metric of the task (accuracy, mae, ...) is a
    further field: its production and candidate means and their difference, null without
    labels"""

    start: Annotated[int, "Window start (ms)"]
    pairs: int
    labelled: int
    agreement: Num
    error_rate: SidePair
    timeout_rate: SidePair


class OutputDelta(TypedDict):
    n: int
    mean_abs: Num
    mean_rel: Num


class Similarity(TypedDict):
    n: int
    mean: Num


class JudgeFigures(TypedDict):
    """Routes with a judge: the pairwise judge's results (docs/llm.md)"""

    metric: Annotated[
        MetricSummary, "The paired metric judge: d = win − loss per judged pair (ties 0)"
    ]
    wins: int
    ties: Annotated[int, "Including the position-inconsistent ones"]
    losses: int
    unparseable: Annotated[int, "Pairs with a reply that could not be parsed (left out)"]
    inconsistent: Annotated[int, "Pairs whose two orders disagreed (counted as ties)"]
    failed: Annotated[int, "Pairs with a failed call (left out)"]
    failures: Annotated[dict[str, int], "Failed pairs by reason"]
    calls: Annotated[int, "Judge calls recorded (two per judged pair)"]


class AssessorFigures(TypedDict):
    """What this process's assessor did for the route's judge, similarity or embedding drift
    endpoint since it started (the budget counts the calls recorded before)"""

    sampled: Annotated[int, "Candidate pairs in its sample (embedding_drift: requests)"]
    assessed: Annotated[int, "Pairs (requests) it asked about"]
    calls: int
    unparseable: Annotated[int, "Judge replies that could not be parsed"]
    inconsistent: Annotated[int, "Judged pairs whose two orders disagreed"]
    truncated: Annotated[int, "Texts cut to max_chars"]
    skipped: Annotated[
        dict[str, int],
        "Sampled pairs (requests) not assessed, by reason: rate_limited, budget_exhausted, "
        "circuit_open, no_text, no_input, too_large",
    ]
    failures: Annotated[dict[str, int], "Failed calls by reason"]
    budget: Annotated[int | None, "max_calls (null: no limit)"]
    budget_spent: int
    budget_left: Annotated[int | None, "null: no limit"]
    breaker: Literal["closed", "open", "half_open"]
    breaker_opened: Annotated[int, "Times the breaker opened"]


class EmbeddingSimilarity(TypedDict):
    """Routes with similarity: cosine similarity of the answers' embeddings"""

    n: int
    mean: Num
    failed: int
    failures: dict[str, int]
    calls: int


class ClassFigures(TypedDict):
    true_positives: int
    predicted: Annotated[int, "Instances the model gave this class"]
    precision: Num
    recall: Num
    f1: Num


class RecallDiff(TypedDict):
    """Candidate minus production recall on the same labelled requests, with an anytime-valid
    interval (all classes' hold together)"""

    estimate: Num
    lower: float
    upper: float
    n: int
    candidate_only_right: NotRequired[int]
    production_only_right: NotRequired[int]


ClassRow = TypedDict(
    "ClassRow",
    {
        "class": str,
        "support": Annotated[int, "Labelled instances"],
        "production": ClassFigures,
        "candidate": ClassFigures,
        "recall_diff": RecallDiff,
    },
)


class Macro(TypedDict):
    production: dict[str, Num]
    candidate: dict[str, Num]


class Confusion(TypedDict):
    rows: NotRequired[Literal["label"]]
    labels: list[str]
    columns: list[str]
    production: list[list[int]]
    candidate: list[list[int]]


class ClassInterval(TypedDict):
    alpha: float
    alpha_per_class: float
    note: str


class ClassViews(TypedDict):
    """Classification routes: per-class figures of production and the candidate on the same
    labelled pairs (docs/comparator.md "Per-class views")"""

    classes: list[str]
    max_classes: int
    declared: Annotated[bool, "The tracked classes are routes[].classes"]
    untracked: Annotated[int, "Labelled instances with a class beyond the tracked ones (in other)"]
    other: Annotated[str, "The name of the other bucket"]
    no_prediction: Annotated[str, "The candidate's column for instances it gave no prediction for"]
    per_class: list[ClassRow]
    macro: Macro
    confusion: Confusion
    interval: ClassInterval


class CandidateScores(TypedDict):
    """A candidate's figures, cumulative and per window (``CandidateState.scores``)"""

    pairs: int
    instances: int
    labelled: int
    invalid_instances: int
    invalid_labelled: int
    orphan_pairs: int
    agreement: MetricSummary
    error_rate: MetricSummary
    timeout_rate: MetricSummary
    availability: MetricSummary
    outcomes: Outcomes
    rates: Rates
    latency_ms: LatencyMs
    quality: dict[str, MetricSummary]
    audit: Audit
    windows: Annotated[dict[str, list[Window]], "Series by window length"]
    output_delta: NotRequired[
        Annotated[OutputDelta, "Regression and probability routes: the outputs' difference"]
    ]
    classes: NotRequired[ClassViews]
    similarity: NotRequired[
        Annotated[
            Similarity,
            "Text routes: mean difflib similarity of the two answers (1 = identical)",
        ]
    ]
    llm: NotRequired[
        Annotated[
            LlmScores,
            "openai routes: time to first token, inter-token latency, tokens and cost",
        ]
    ]
    judge: NotRequired[JudgeFigures]
    embedding_similarity: NotRequired[EmbeddingSimilarity]


class Scores(TypedDict):
    """``GET .../scores``: the header, then (once there are pairs) ``CandidateScores``"""

    route: str
    candidate: str
    task: str
    production: str
    sign: str
    pairs: int
    labelled: int
    instances: NotRequired[int]
    invalid_instances: NotRequired[int]
    invalid_labelled: NotRequired[int]
    orphan_pairs: NotRequired[int]
    agreement: NotRequired[MetricSummary]
    error_rate: NotRequired[MetricSummary]
    timeout_rate: NotRequired[MetricSummary]
    availability: NotRequired[MetricSummary]
    outcomes: NotRequired[Outcomes]
    rates: NotRequired[Rates]
    latency_ms: NotRequired[LatencyMs]
    quality: NotRequired[dict[str, MetricSummary]]
    audit: NotRequired[Audit]
    windows: NotRequired[dict[str, list[Window]]]
    output_delta: NotRequired[OutputDelta]
    classes: NotRequired[ClassViews]
    similarity: NotRequired[
        Annotated[
            Similarity,
            "Text routes: mean difflib similarity of the two answers (1 = identical)",
        ]
    ]
    llm: NotRequired[
        Annotated[
            LlmScores,
            "openai routes: time to first token, inter-token latency, tokens and cost",
        ]
    ]
    judge: NotRequired[JudgeFigures]
    embedding_similarity: NotRequired[EmbeddingSimilarity]
    assessor: NotRequired[
        Annotated[
            dict[str, AssessorFigures],
            "Routes with a judge, similarity or embedding drift endpoint: this process's "
            "assessor, by kind (judge, similarity, embedding_drift)",
        ]
    ]
    noise: NotRequired[bool]
    noise_floor: NotRequired[NoiseFloor | None]


# --- production --------------------------------------------------------------------------------


class QualityPoint(TypedDict):
    start: int
    n: int
    value: Num


class CoveragePoint(TypedDict):
    start: int
    predictions: int
    labelled: int
    coverage: Num


class DriftAuto(TypedDict):
    """Automatic drift (drift.auto): the fields found and what was counted, not tracked"""

    enabled: bool
    max_fields: int
    fields: list[str]
    untracked_values: int
    untracked_examples: list[str]
    too_deep_values: NotRequired[int]
    fields_left_out_of_merge: NotRequired[int]


class LabelsWaiting(TypedDict):
    """Labels kept waiting for their pair (they matched no request seen so far)"""

    waiting: Annotated[int, "Labels of this route"]
    waiting_without_route: Annotated[
        int, "Labels sent without a route (any route's pair may join them)"
    ]
    max_waiting_per_route: int


class ProductionSummary(TypedDict):
    """Production's monitoring (``ProductionState.summary``)"""

    route: str
    metric: str
    window: str
    counts: dict[str, int]
    revision: Annotated[JsonObject | None, "The production revision the figures are about"]
    revision_since: int | None
    quality: list[QualityPoint]
    degradation: Annotated[JsonObject, "Production against its reference windows"]
    label_delay_ms: JsonObject
    label_coverage: list[CoveragePoint]
    drift: Annotated[
        dict[str, JsonObject],
        "Per field: its distances and drift state (embedding drift: fields embedding:<path>, "
        "embedding:output; docs/llm.md)",
    ]
    drift_auto: DriftAuto


class Production(TypedDict):
    """``GET /v1/routes/{route}/production``"""

    route: str
    model: str
    task: str
    labels: LabelsWaiting
    metric: NotRequired[str]
    window: NotRequired[str]
    counts: dict[str, int]
    revision: NotRequired[
        Annotated[JsonObject | None, "The production revision the figures are about"]
    ]
    revision_since: NotRequired[int | None]
    quality: list[QualityPoint]
    degradation: NotRequired[Annotated[JsonObject, "Production against its reference windows"]]
    label_delay_ms: NotRequired[JsonObject]
    label_coverage: NotRequired[list[CoveragePoint]]
    drift: Annotated[
        dict[str, JsonObject],
        "Per field: its distances and drift state (embedding drift: fields embedding:<path>, "
        "embedding:output; docs/llm.md)",
    ]
    drift_auto: NotRequired[DriftAuto]


# --- routes, lineage, overview -----------------------------------------------------------------


class RouteInfo(TypedDict):
    name: str
    task: str
    production: str
    candidates: list[str]


class Routes(TypedDict):
    routes: list[RouteInfo]


class RegistryVersion(TypedDict):
    """A model's version in the model registry (docs/registry.md), read at start and every
    ``registry.refresh_s``, never per request."""

    kind: Literal["mlflow"]
    registered_model: str
    alias: Annotated[str | None, "The alias the version is read from"]
    version: Annotated[str | None, "null until the first good read"]
    run_id: Annotated[str | None, "The run that produced the version"]
    source: str | None
    aliases: list[str]
    tags: Annotated[dict[str, str], "The version's shadowroute.* tags (the verdict written)"]
    url: Annotated[str | None, "The version's page on the tracking server"]
    read_at: Annotated[float | None, "Unix time of the last good read"]
    error: Annotated[str | None, "Why the last read failed (the last good read stays)"]


class Lineage(TypedDict):
    model: str
    route: str
    role: Literal["production", "candidate"]
    version: str | None
    declared: Annotated[JsonObject | None, "The lineage the config declares"]
    age_days: Annotated[Num, "Days since lineage.trained_through"]
    live_quality: Annotated[
        Mapping[str, object],
        "Production: its quality series and degradation; a candidate: its quality metrics",
    ]
    drift: NotRequired[dict[str, JsonObject]]
    decision: NotRequired[Decision]
    verdicts: list[HistoryEntry]
    registry: NotRequired[
        Annotated[
            RegistryVersion | None,
            "The model registry's version of this model; null when registry.models does not "
            "bind it, absent without a registry section",
        ]
    ]


class OverviewCandidate(TypedDict):
    route: str
    candidate: str
    decision: Decision
    orphan_pairs: int
    classes_untracked: int
    llm: NotRequired[LlmScores]
    judge: NotRequired[JudgeFigures]
    embedding_similarity: NotRequired[EmbeddingSimilarity]


class ModelAge(TypedDict):
    route: str
    model: str
    role: Literal["production", "candidate"]
    age_days: float


class Overview(TypedDict):
    """Everything the metrics collector exports, in one read"""

    candidates: list[OverviewCandidate]
    production: dict[str, Production]
    partition: dict[str, int]
    models: list[ModelAge]


class FlaggerCall(TypedDict):
    """What a Flagger webhook call said: its canary and phase."""

    name: str
    namespace: str
    phase: str
    checksum: str | None


GateAnswer = TypedDict(  # functional form: "pass" is a Python keyword
    "GateAnswer",
    {
        "gate": Annotated[str, "argo, spinnaker, check or flagger-<hook>"],
        "route": str,
        "candidate": str,
        "outcome": Annotated[
            Literal["pass", "fail", "hold"],
            "What the verdict means for this gate (rollback: pass on reject)",
        ],
        "pass": Annotated[bool, "Does the gate let the tool go on"],
        "verdict": Annotated[
            Literal["promote", "hold", "reject"],
            "The verdict for the asked revision: hold when the evidence is about another one "
            "(Argo jsonPath {$.verdict}, Spinnaker statusJsonPath $.verdict)",
        ],
        "revision": Annotated[str, "The revision asked about"],
        "revision_matches": bool,
        "evidence_revision": Annotated[str | None, "The revision id the evidence is about"],
        "reasons": list[str],
        "decision": Decision,
        "flagger": NotRequired[
            Annotated[FlaggerCall, "Flagger gates: name, namespace, phase and checksum"]
        ],
    },
)
"""A deploy gate's answer (docs/api.md, "Deploy gates")."""


COMPONENTS: tuple[type, ...] = (
    Decision,
    EvidenceRevision,
    MetricEvidence,
    LabelsWaiting,
    ClassViews,
    DriftAuto,
    Scores,
    Production,
    History,
    Lineage,
    RegistryVersion,
    GateAnswer,
)
"""The documents served as OpenAPI ``components.schemas`` (by class name); the documents they
use are inlined."""
