"""Pure statistics for the comparator: confidence sequences, audit tests, sketches, verdicts."""

from shadowroute.core.stats.confseq import AsymState, eb_interval
from shadowroute.core.stats.paired import METRICS, MetricSpec, PairedMetric, metric_spec
from shadowroute.core.stats.policy import Decision, decide, metric_alpha, primary_metric
from shadowroute.core.stats.sketch import Sketch

__all__ = [
    "METRICS",
    "AsymState",
    "Decision",
    "MetricSpec",
    "PairedMetric",
    "Sketch",
    "decide",
    "eb_interval",
    "metric_alpha",
    "metric_spec",
    "primary_metric",
]
