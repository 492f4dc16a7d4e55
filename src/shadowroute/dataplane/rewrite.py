"""A candidate's own request: the path and headers it is sent, when it is not served exactly
as production is.

Model servers put the model's name in the path (KServe v1 and TF Serving
``/v1/models/<name>:predict``, Open Inference ``/v2/models/<name>/infer``), so a candidate
deployed under its own name answers 404 to production's path. A candidate's ``rewrite``
config says what changes: the route's path prefix replaced, a fixed path, the model name in
the path, client headers left out. Its configured ``headers`` replace the client's headers
of the same name. Pure functions on bytes, run when a mirror is sent (after the client's
body is complete, never on the client's path), and only for a candidate that has something
to change.

>>> from shadowroute.core.config import Rewrite
>>> rw = Rewriter(b"/v1/models/fraud", Rewrite(model="fraud-v2"), frozenset({b"x-api-key"}))
>>> rw.target(b"/v1/models/fraud:predict?debug=1")
b'/v1/models/fraud-v2:predict?debug=1'
>>> rw.headers(b"Accept: */*\\r\\nX-Api-Key: client\\r\\n")
b'Accept: */*\\r\\n'
"""

from __future__ import annotations

from shadowroute.core.config import Rewrite

__all__ = ["Rewriter", "replace_model", "without_headers"]

_MODELS = b"/models/"


def replace_model(path: bytes, model: bytes) -> bytes:
    """``path`` with the model name after ``/models/`` replaced by ``model`` (up to the next
    ``/`` or ``:``); ``path`` itself when it names no model.

    >>> replace_model(b"/v2/models/fraud/versions/3/infer", b"fraud-v2")
    b'/v2/models/fraud-v2/versions/3/infer'
    >>> replace_model(b"/v1/models/fraud:predict", b"fraud-v2")
    b'/v1/models/fraud-v2:predict'
    >>> replace_model(b"/predict", b"fraud-v2")
    b'/predict'
    """
    at = path.find(_MODELS)
    if at < 0:
        return path
    start = at + len(_MODELS)
    end = start
    n = len(path)
    while end < n and path[end] not in b"/:":
        end += 1
    if end == start:
        return path
    return path[:start] + model + path[end:]


def without_headers(block: bytes, names: frozenset[bytes]) -> bytes:
    """A block of header lines (``Name: value`` + CRLF each, as the data plane builds them)
    without the lines whose lower-cased name is in ``names``.

    >>> without_headers(b"A: 1\\r\\nB: 2\\r\\nb: 3\\r\\n", frozenset({b"b"}))
    b'A: 1\\r\\n'
    """
    if not block:
        return block
    kept = []
    for line in block.split(b"\r\n")[:-1]:
        name = line.split(b":", 1)[0]
        if name.lower() not in names:
            kept.append(line + b"\r\n")
    return b"".join(kept)


class Rewriter:
    """What one candidate changes in the requests it is sent."""

    def __init__(self, route_prefix: bytes, rewrite: Rewrite, replaced: frozenset[bytes]) -> None:
        self.route_prefix = route_prefix
        self.path = rewrite.path.encode() if rewrite.path is not None else None
        self.path_prefix = rewrite.path_prefix.encode() if rewrite.path_prefix is not None else None
        self.model = rewrite.model.encode() if rewrite.model is not None else None
        self.drop = frozenset(h.lower().encode() for h in rewrite.remove_headers) | replaced
        """Client headers not sent: ``remove_headers`` and the candidate's own headers."""
        self.changes_target = (
            self.path is not None or self.path_prefix is not None or self.model is not None
        )

    def target(self, url: bytes) -> bytes:
        """The request target this candidate is sent for a client's ``url`` (the query kept).

        >>> from shadowroute.core.config import Rewrite
        >>> fixed = Rewriter(b"/score", Rewrite(path="/v2/predict{tail}"), frozenset())
        >>> fixed.target(b"/score/x?a=1")
        b'/v2/predict/x?a=1'
        >>> Rewriter(b"/v1/", Rewrite(path_prefix="/api/v1/"), frozenset()).target(b"/v1/m")
        b'/api/v1/m'
        """
        if not self.changes_target:
            return url
        path, sep, query = url.partition(b"?")
        # The route matched this path, so it starts with the route's prefix.
        tail = path[len(self.route_prefix) :]
        if self.path is not None:
            path = self.path.replace(b"{tail}", tail)
        elif self.path_prefix is not None:
            path = self.path_prefix + tail
        if self.model is not None:
            path = replace_model(path, self.model)
        return path + sep + query

    def headers(self, block: bytes) -> bytes:
        """The client's header lines this candidate is sent."""
        return without_headers(block, self.drop) if self.drop else block
