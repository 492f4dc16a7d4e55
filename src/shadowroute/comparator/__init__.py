"""The comparator: joins pair records with labels, scores candidates, watches production.

- ``Comparator`` (embedded mode) and ``run_compare`` / ``KafkaComparator`` (Kafka mode);
- ``Reader`` answers the API (``shadowroute.api.scores``) through ``ScoresReader``.

See docs/comparator.md.
"""

from shadowroute.comparator.embedded import Comparator, DeadLetters
from shadowroute.comparator.reader import NotFound, Reader, ScoresReader, StateView, Verdicts

__all__ = [
    "Comparator",
    "DeadLetters",
    "NotFound",
    "Reader",
    "ScoresReader",
    "StateView",
    "Verdicts",
]
