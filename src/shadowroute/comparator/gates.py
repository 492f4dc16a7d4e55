"""Deploy gates: a decision document, the revision a deploy tool asks about and the tool's gate
kind in, the HTTP status and body the tool understands out. Pure: no I/O, no event loop.

Each tool reads a gate its own way (docs/deploy.md, "Deploy gates"):

- ``argo`` (Argo Rollouts / Kargo ``web`` metric provider): any non-2xx is a measurement
  *Error*, not *Failed*, so every verdict answers 200 and the AnalysisTemplate's conditions
  on ``{$.verdict}`` decide: ``promote`` Successful, ``reject`` Failed, ``hold`` Inconclusive.
- ``spinnaker`` (webhook stage, ``statusJsonPath: $.verdict``): 200 for every verdict; a 4xx
  while monitoring would end the stage TERMINAL at once, so ``hold`` must be a 200 whose status
  is in neither ``successStatuses`` (``promote``) nor ``terminalStatuses`` (``reject``): RUNNING.
- ``check`` (CI, curl, anything that reads the status code): 200 on promote, 412 otherwise.
- ``flagger-<hook>`` (Flagger webhooks: only 200-202 passes): ``confirm-promotion`` and
  ``pre-rollout`` pass on promote; ``rollout`` fails only on reject; the inverted ``rollback``
  hook passes (Flagger rolls back) only on reject. Everything else is 412.

Evidence about another revision than the one asked is never a pass: the verdict for the asked
revision is then ``hold`` (``stale_revision``), which no gate passes but ``flagger-rollout``
(that hook only stops a canary, and hold never stops one).

>>> doc = {"route": "r", "candidate": "c", "verdict": "promote", "reasons": ["ok"],
...        "revision": {"id": "3f9a1c2b4d5e", "candidate": {"url": "http://c",
...        "version": "8", "revision": "sha256:b"}, "production": {}}}
>>> [gate(doc, "sha256:b", k)[0] for k in ("argo", "check", "flagger-confirm-promotion")]
[200, 200, 200]
>>> status, body = gate(doc, "sha256:a", "check")
>>> status, body["verdict"], body["outcome"], body["revision_matches"]
(412, 'hold', 'hold', False)
>>> gate({**doc, "verdict": "reject"}, "sha256:b", "flagger-rollback")[0]
200
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from shadowroute.comparator.documents import Decision, FlaggerCall, GateAnswer
from shadowroute.comparator.reader import stale_revision

__all__ = [
    "FLAGGER_HOOKS",
    "GATE_KINDS",
    "MAX_REVISION_LEN",
    "GateInputError",
    "check_revision",
    "flagger_request",
    "gate",
]

Outcome = Literal["pass", "fail", "hold"]

FLAGGER_HOOKS: Final = ("confirm-promotion", "pre-rollout", "rollout", "rollback")
"""Flagger webhook types a gate answers (``/v1/gates/flagger/{route}/{candidate}/{hook}``)."""
GATE_KINDS: Final = ("argo", "spinnaker", "check", *(f"flagger-{h}" for h in FLAGGER_HOOKS))
MAX_REVISION_LEN: Final = 256
"""The longest revision a gate takes (a digest, a checksum); longer is a 400."""
MAX_FLAGGER_FIELD: Final = 1024
"""The longest string field of a Flagger payload."""

_PASS: Final[dict[str, frozenset[str]]] = {
    "check": frozenset({"promote"}),
    "flagger-confirm-promotion": frozenset({"promote"}),
    "flagger-pre-rollout": frozenset({"promote"}),
    "flagger-rollout": frozenset({"promote", "hold"}),
    "flagger-rollback": frozenset({"reject"}),
}
"""Status-code gates: the verdicts answered 200 (everything else 412)."""
_ALWAYS_200: Final = frozenset({"argo", "spinnaker"})
"""Gates whose tool reads the verdict from the body: every verdict answers 200."""


class FlaggerRequest(FlaggerCall):
    """A Flagger call as a gate reads it: the call, its metadata and the revision asked."""

    metadata: dict[str, str]
    revision: str


class GateInputError(ValueError):
    """A gate request the tool should not have sent (the API answers 400 with the message)."""


def check_revision(revision: str | None) -> str:
    """The asked revision, or ``GateInputError`` when it is missing or unusable.

    >>> check_revision(" sha256:ab ")
    'sha256:ab'
    >>> check_revision("")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shadowroute.comparator.gates.GateInputError: a gate needs the revision deployed ...
    """
    rev = (revision or "").strip()
    if not rev:
        raise GateInputError(
            "a gate needs the revision deployed (?revision=, a Flagger checksum or "
            "metadata.revision): it never passes on evidence about an unnamed revision"
        )
    if len(rev) > MAX_REVISION_LEN or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in rev):
        raise GateInputError(f"revision must be at most {MAX_REVISION_LEN} printable characters")
    return rev


def _outcome(kind: str, verdict: str) -> Outcome:
    """What the verdict means for this gate: pass, fail (the tool stops), or hold."""
    if kind == "flagger-rollback":
        return "pass" if verdict == "reject" else "hold"
    if verdict == "promote":
        return "pass"
    if verdict == "reject":
        return "fail"
    return "pass" if kind == "flagger-rollout" else "hold"


def gate(decision: Decision, revision: str, kind: str) -> tuple[int, GateAnswer]:
    """(HTTP status, body) of gate ``kind`` for ``decision`` (a decision document about the
    candidate's current evidence, without ``?revision=`` applied) asked about ``revision``.

    The body: ``gate``, ``outcome`` (pass | fail | hold, as this gate reads the verdict),
    ``pass`` (did the gate let the tool go on), ``verdict`` (for the asked revision: hold
    when the evidence is about another one), ``revision`` (asked), ``revision_matches``,
    ``evidence_revision`` (the revision id the evidence is about), ``reasons`` (the gate's
    line first, then the decision's) and ``decision`` (the document, stale rewrite applied).
    """
    if kind not in GATE_KINDS:
        raise GateInputError(f"unknown gate {kind!r}: one of {', '.join(GATE_KINDS)}")
    stale = stale_revision(decision, revision)
    doc = decision if stale is None else stale
    verdict = doc["verdict"]
    outcome = _outcome(kind, verdict)
    if kind in _ALWAYS_200:
        status, passed = 200, outcome == "pass"
    else:
        passed = verdict in _PASS[kind]
        status = 200 if passed else 412
    rev = decision.get("revision")
    evidence = rev["id"] if rev is not None else None
    line = (
        f"gate {kind}: verdict {verdict} for revision {revision!r} -> "
        f"{'pass' if passed else 'no pass'} ({outcome})"
    )
    body: GateAnswer = {
        "gate": kind,
        "route": decision["route"],
        "candidate": decision["candidate"],
        "outcome": outcome,
        "pass": passed,
        "verdict": verdict,
        "revision": revision,
        "revision_matches": stale is None,
        "evidence_revision": evidence,
        "reasons": [line, *[str(r) for r in doc["reasons"]]],
        "decision": doc,
    }
    return status, body


def _field(doc: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise GateInputError(f"Flagger payload: {name!r} must be a non-empty string")
    if len(value) > MAX_FLAGGER_FIELD:
        raise GateInputError(f"Flagger payload: {name!r} is longer than {MAX_FLAGGER_FIELD}")
    return value


def _required(doc: Mapping[str, Any], name: str) -> str:
    value = _field(doc, name, required=True)
    assert value is not None  # _field refuses a missing required field
    return value


def flagger_request(doc: object) -> FlaggerRequest:
    """The parts of a Flagger webhook payload ``{name, namespace, phase, checksum,
    metadata}`` a gate uses: ``name``, ``namespace``, ``phase``, ``metadata`` and the
    ``revision`` asked (``metadata.revision`` when given, e.g. an image digest, else the
    ``checksum``). ``GateInputError`` says what is wrong with a malformed one.

    >>> flagger_request({"name": "fraud", "namespace": "ml", "phase": "Progressing",
    ...                  "checksum": "7c9f", "metadata": {"k": "v"}})["revision"]
    '7c9f'
    >>> flagger_request({"name": "fraud", "namespace": "ml", "phase": "Progressing",
    ...                  "checksum": "7c9f", "metadata": {"revision": "sha256:b"}})["revision"]
    'sha256:b'
    >>> flagger_request([])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shadowroute.comparator.gates.GateInputError: Flagger payload: expected a JSON object ...
    """
    if not isinstance(doc, Mapping):
        raise GateInputError(
            "Flagger payload: expected a JSON object {name, namespace, phase, checksum, metadata}"
        )
    name = _required(doc, "name")
    namespace = _required(doc, "namespace")
    phase = _required(doc, "phase")
    checksum = _field(doc, "checksum", required=False)
    meta = doc.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping) or not all(isinstance(v, str) for v in meta.values()):
        raise GateInputError("Flagger payload: 'metadata' must be an object of strings")
    asked = meta.get("revision") or checksum
    return {
        "name": name,
        "namespace": namespace,
        "phase": phase,
        "checksum": checksum,
        "metadata": {str(k): str(v) for k, v in meta.items()},
        "revision": check_revision(asked),
    }
