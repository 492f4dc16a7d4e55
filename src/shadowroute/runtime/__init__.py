"""Process assembly: the one package that builds shadowroute's processes from the layers
below it, and the only one that starts the admin server or installs signal handlers.

- ``serve``: one process (``serve.py``): data plane, records backend, admin plane.
- ``serve --workers N``: a supervisor and N data-plane processes (``workers.py``).
- ``compare``: the Kafka comparator's process (``compare.py``).

Every shape picks its records backend through ``backend.records_backend`` (the embedded
comparator, or the Kafka topics), starts its admin plane through ``admin.admin_server``
with the routes of ``admin.control_plane``, and waits for its stop signal through
``lifecycle``.
"""

from shadowroute.runtime.backend import RecordsBackend, records_backend
from shadowroute.runtime.compare import run_compare
from shadowroute.runtime.lifecycle import StartError, wait_for_signal
from shadowroute.runtime.serve import Stack, embedded_stack, serve

__all__ = [
    "RecordsBackend",
    "Stack",
    "StartError",
    "embedded_stack",
    "records_backend",
    "run_compare",
    "serve",
    "wait_for_signal",
]
