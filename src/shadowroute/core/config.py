"""The typed configuration: one object built at start-up and passed down.

``parse_config(raw, environ)`` applies environment overrides to an already-parsed document
and validates it. Every error names the field path (``routes[0].candidates[1].fraction``) and
what is wrong; unknown keys are errors. The reference is ``docs/config.md``.

Pure: the environment is passed in, and secret files are read through the function passed in;
reading the YAML file, ``os.environ`` and the secret files is ``shadowroute.configfile``'s job.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shadowroute.core.config_cross import cross_problems, protocol_problem
from shadowroute.core.drift_fields import PathError, compile_path

Protocol = Literal["openinference", "kserve-v1", "tfserving", "openai", "jsonpath"]
Task = Literal["classification", "probability", "regression", "text"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_MODEL_IN_PATH = frozenset({"kserve-v1", "openinference", "tfserving"})
Name = Annotated[str, Field(pattern=_NAME)]
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
ALWAYS_SENSITIVE = ("authorization", "cookie", "set-cookie", "proxy-authorization")


class ConfigError(ValueError):
    """A configuration problem; ``str()`` lists each as ``path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class FieldProblem(ValueError):
    """Raised by a validator of a section about one of its keys: the problem is reported at
    ``<section>.<loc>``, not at the section."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    """Address the proxy listens on for client traffic."""
    port: int = Field(8080, ge=0, le=65535)
    """Port for client traffic (0 picks a free port; with `--workers` it must be fixed)."""


class Admin(_Strict):
    host: str = "127.0.0.1"
    """Address of the admin plane: /metrics, /healthz, /readyz, the API and the scorecard."""
    port: int = Field(9090, ge=0, le=65535)
    """Port of the admin plane."""
    token: SecretStr | None = None
    """Bearer token required by write endpoints (`POST /v1/labels`, `PUT /v1/mirroring`).
    Required when `host` is not a loopback address, unless `insecure` is set."""
    insecure: bool = False
    """Allow the admin plane beyond loopback without a token (anyone who reaches the port can
    post labels and switch mirroring)."""
    read_token: SecretStr | None = None
    """When set, reads (the API, the scorecard, OpenAPI) need this token or `token`;
    `/healthz`, `/readyz` and `/metrics` stay open."""
    allowed_hosts: list[str] = []
    """Host header values the admin plane answers (port ignored) besides IP addresses,
    `localhost` and `host` itself: names (`shadowroute.ml.svc`), `*.suffix` patterns, or `*`
    for any. Anything else is refused (421): a DNS-rebinding page cannot reach the API."""
    allowed_origins: list[str] = []
    """Origins (`https://ops.example.com`) allowed to send writes from a browser besides the
    admin plane's own; any other `Origin` on a write is refused (403)."""

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Admin:
        if self.token is None and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable beyond this machine: set token (or "
                "SHADOWROUTE_API_TOKEN), bind to 127.0.0.1, or set insecure: true"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class KafkaSecurity(_Strict):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism, for the SASL_* protocols."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (prefer SHADOWROUTE_KAFKA_SASL_PASSWORD)."""
    ssl_cafile: str | None = None
    """CA bundle to verify the brokers (SSL, SASL_SSL)."""
    ssl_certfile: str | None = None
    """Client certificate, for mutual TLS."""
    ssl_keyfile: str | None = None
    """Client private key, for mutual TLS."""

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL_"):
            missing = [
                f
                for f in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(f"{self.protocol} needs {', '.join(missing)}")
        return self


class Topics(_Strict):
    partitions: int = Field(6, ge=1, le=10_000)
    """Partitions of the pairs and labels topics (they must match: co-partitioning)."""
    replication: int = Field(1, ge=1, le=16)
    """
    Replication factor of the topics created by `shadowroute topics create` (3 in production,
    checked against the cluster's broker count).
    """
    min_insync_replicas: int | None = Field(None, ge=1, le=16)
    """
    `min.insync.replicas` of the created topics: with `acks: all` a write needs this many
    replicas. Default: 2 when `replication` ≥ 3, else 1 (the recommended 3 / 2 survives one
    broker down without losing or refusing writes).
    """
    retention_hours: float = Field(168, gt=0)
    """Retention of the pairs and labels topics; keep it above the label TTL."""

    @model_validator(mode="after")
    def _isr(self) -> Topics:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) cannot exceed replication "
                f"({self.replication}): no write could ever be accepted"
            )
        return self

    @property
    def min_isr(self) -> int:
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return 2 if self.replication >= 3 else 1


class Spool(_Strict):
    path: str = "./shadowroute-spool"
    """Directory of the on-disk spool that holds records while Kafka is unreachable."""
    max_bytes: int = Field(1 << 30, ge=1 << 20)
    """Spool size bound; beyond it `when_full` applies and drops are counted."""
    segment_bytes: int = Field(16 << 20, ge=1 << 16)
    """Size of one append-only spool segment."""
    fsync: Literal["never", "segment", "always"] = "segment"
    """When spool writes are fsync-ed: never, when a segment is closed, or on every write."""
    when_full: Literal["drop_newest", "drop_oldest"] = "drop_newest"
    """Which records a full spool drops: the new ones, or the oldest segment."""


class Transport(_Strict):
    kind: Literal["embedded", "kafka"] = "embedded"
    """
    `embedded`: one process, an in-process channel, no broker. `kafka`: scale-out through Kafka.
    """
    bootstrap: str | None = None
    """Kafka bootstrap servers, `host:port[,host:port]` (required for `kafka`)."""
    topic_prefix: Name = "shadowroute"
    """Topics are `<prefix>.pairs`, `.labels`, `.scores` (compacted) and `.deadletter`."""
    acks: Literal["all", "1", "0"] = "all"
    """Producer acknowledgements; `all` keeps the idempotent producer on."""
    linger_ms: int = Field(50, ge=0, le=60_000)
    """
    How long records linger before the sink hands them to the producer as one batch per
    partition. Each produce round trip costs the client a fixed few hundred µs of CPU, so a
    short linger taxes the proxy at low rates (5 ms: up to ~8% of a core); records wait at most
    this long (or until `batch_bytes` fill), which the comparator does not notice.
    """
    batch_bytes: int = Field(256 << 10, ge=1024)
    """Producer batch size in bytes."""
    compression: Literal["none", "lz4", "zstd", "gzip"] = "lz4"
    """Producer compression codec."""
    security: KafkaSecurity = KafkaSecurity()
    """TLS and SASL settings."""
    topics: Topics = Topics()
    """How `shadowroute topics create` provisions the topics."""
    spool: Spool = Spool()
    """The proxy's on-disk spool for Kafka outages."""
    consumer_group: Name = "shadowroute-comparator"
    """Consumer group of the comparators."""

    @model_validator(mode="after")
    def _bootstrap_for_kafka(self) -> Transport:
        if self.kind == "kafka" and not self.bootstrap:
            raise ValueError("kind 'kafka' needs 'bootstrap' (host:port[,host:port])")
        return self


def _http_url(url: str, example: str) -> SplitResult:
    """``url``'s parts when it is an http(s) URL with a host and a valid port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, like {example}")
    if not parts.hostname:
        raise ValueError("has no host: write it as http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return parts


def _check_url(url: str) -> str:
    parts = _http_url(url, "http://10.0.0.5:8000")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment: write only scheme, host, port, path")
    return url


class Lineage(_Strict):
    trained_through: str | None = None
    """ISO date of the newest training data, e.g. ``2026-10-31``."""
    training_data: str | None = None
    """Where the training data came from (free text or a URI)."""
    offline_metrics: dict[str, float] = {}
    """Offline evaluation figures, e.g. `{auc: 0.87}`."""
    notes: str | None = None
    """Anything else worth knowing about this version."""


class Price(_Strict):
    """What a language model's tokens cost, in any currency (both sides of a comparison
    should use the same one): per million input (prompt) and output (completion) tokens."""

    input_per_million: float = Field(ge=0, allow_inf_nan=False)
    """Price of one million input (prompt) tokens."""
    output_per_million: float = Field(ge=0, allow_inf_nan=False)
    """Price of one million output (completion) tokens."""

    def cost(self, tokens_in: float, tokens_out: float) -> float:
        """The cost of ``tokens_in`` input and ``tokens_out`` output tokens."""
        return (tokens_in * self.input_per_million + tokens_out * self.output_per_million) / 1e6


def _header_names(headers: dict[str, str]) -> dict[str, str]:
    bad = [h for h in headers if h.lower() in HOP_BY_HOP or not h.isascii()]
    if bad:
        raise ValueError(f"cannot set hop-by-hop or non-ASCII header(s) {bad}")
    return headers


def _secret_refs(headers: dict[str, str]) -> dict[str, str]:
    if any(not r.startswith(("env:", "file:")) for r in headers.values()):
        raise ValueError("each value must be env:VARIABLE or file:PATH")
    return headers


UpstreamUrl = Annotated[str, AfterValidator(_check_url)]
"""An http(s) URL of a server shadowroute calls (``_check_url``)."""
ExtraHeaders = Annotated[dict[str, str], AfterValidator(_header_names)]
"""Headers added to a server's calls: no hop-by-hop or non-ASCII names."""
SecretHeaderRefs = Annotated[
    dict[str, str], AfterValidator(_header_names), AfterValidator(_secret_refs)
]
"""Headers whose values are secrets, each ``env:VARIABLE`` or ``file:PATH``."""


class _CallsOut(_Strict):
    """A section that calls a server with extra headers, some of them secrets
    (``secret_headers``, resolved by ``parse_config``)."""

    _secrets: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    def secret_header_values(self) -> dict[str, str]:
        """The secret headers, resolved at start (``parse_config``)."""
        return {k: v.get_secret_value() for k, v in self._secrets.items()}


class Model(_CallsOut):
    name: Name
    """Model name, unique within the route; it labels records, scores and metrics."""
    url: UpstreamUrl
    """Base URL of the model server (`http://` or `https://`); the request path is appended."""
    timeout_s: float = Field(2.0, gt=0, le=600)
    """
    Time allowed for the response. Production: beyond it the client gets 504. Candidate: the
    mirror is recorded as `timeout`. Deadlines are checked every 10 ms, so a timeout fires up
    to 10 ms late, never early.
    """
    version: str | None = None
    """Model version, carried into records and lineage."""
    revision: str | None = Field(None, min_length=1, max_length=256)
    """
    The deployed revision, as deploy tooling names it (an image digest, a Flagger checksum); it
    can also be set at run time (`PUT .../revision`). Evidence belongs to one revision: a
    change of `url`, `version` or `revision` starts fresh evidence (docs/comparator.md).
    """
    headers: ExtraHeaders = {}
    """Extra headers sent to this upstream (e.g. an API key for the model server)."""
    secret_headers: SecretHeaderRefs = {}
    """Extra headers whose values are secrets, each `env:VARIABLE` (an environment variable)
    or `file:PATH` (a file's content, e.g. a mounted Kubernetes secret; trailing newline
    removed), read at start."""
    lineage: Lineage | None = None
    """What this version was trained on (for `/v1/models/{model}/lineage`)."""
    price: Price | None = None
    """`openai` routes: what this model's tokens cost, for the cost per request and the
    `cost_ratio` guardrail (docs/llm.md). None: no cost is shown for it."""


class Rewrite(_Strict):
    """What changes in the requests a candidate served under its own name is sent (api.md)."""

    model: Name | None = None
    """The candidate's model name, put where the request path names production's model: the
    segment after `/models/` (KServe v1 and TF Serving `/v1/models/<name>:predict`, Open
    Inference `/v2/models/<name>/infer`). Version segments are kept."""
    path_prefix: str | None = None
    """Replaces the route's `path_prefix` at the start of the path (literally:
    `/v1/models/fraud` → `/v1/models/fraud-v2`)."""
    path: str | None = None
    """A fixed path for every mirror (the query string is kept); `{tail}` stands for what
    follows the route's `path_prefix` in the request path."""
    remove_headers: list[str] = []
    """Client headers not sent to this candidate. (The candidate's own `headers` and
    `secret_headers` always replace the client's headers of the same name.)"""

    @model_validator(mode="after")
    def _rewrite(self) -> Rewrite:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError("set one of path and path_prefix, not both")
        for key in ("path", "path_prefix"):
            value = getattr(self, key)
            if value is not None and (not value.startswith("/") or not _path_ok(value)):
                raise ValueError(
                    f"{key} must start with '/' and hold no spaces, '?', '#' or control "
                    f"characters, got {value!r}"
                )
        bad = [h for h in self.remove_headers if not h.isascii() or not h or ":" in h]
        if bad:
            raise ValueError(f"remove_headers: not header names: {bad}")
        return self


def _path_ok(value: str) -> bool:
    return value.isascii() and not any(c in value for c in " ?#") and value.isprintable()


class Candidate(Model):
    fraction: float = Field(1.0, ge=0.0, le=1.0)
    """Share of the route's requests mirrored to this candidate, sampled from the request id
    (`PUT /v1/routes/{route}/candidates/{candidate}/mirror` changes it live)."""
    max_in_flight: int = Field(128, ge=1, le=100_000)
    """Mirrors awaiting an answer at most; beyond it mirrors are dropped and counted."""
    noise: bool = False
    """
    A noise candidate: production itself (or a replica of it) at `url`. Its disagreement and
    paired differences are shown beside every other candidate as the noise floor; it is never
    promoted (see docs/comparator.md).
    """
    forward_private_headers: bool = False
    """Send this candidate the client's `mirror.private_headers` (credentials) too."""
    rewrite: Rewrite | None = None
    """What changes in the requests this candidate is sent: its model name in the path, the
    path, client headers left out (for a candidate deployed under its own name)."""


class Noise(_Strict):
    fraction: float = Field(0.05, gt=0.0, le=1.0)
    """Share of the route's requests mirrored to production's own URL."""
    name: Name = "noise"
    """The noise candidate's name (must not be another model's)."""


class Capture(_Strict):
    input: bool = False
    """Capture the request body's JSON into the record's ``input`` (after drop/hash)."""
    drop_fields: list[str] = []
    """Input fields removed before the record leaves the process (dotted paths allowed)."""
    hash_fields: list[str] = []
    """Input fields replaced by a keyed SHA-256 digest (`sha256:<16 hex>`)."""
    sensitive_headers: list[str] = []
    """Headers never captured or logged, on top of Authorization, Cookie, Set-Cookie."""


def _drift_path(path: str) -> str:
    try:
        compile_path(path)
    except PathError as exc:
        raise ValueError(f"{exc}; a path looks like $.instances[*].amount") from None
    return path


DriftPath = Annotated[str, AfterValidator(_drift_path)]


class EmbeddingDrift(_Strict):
    """Drift of text or vector inputs and text outputs, on embeddings (docs/llm.md)."""

    fields: list[DriftPath] = []
    """JSON paths into the request body of texts (e.g. ``$.messages[-1].content``) or of
    vectors already embedded (an array of `dims` numbers); each selected text or vector is one
    item."""
    outputs: bool = False
    """Also watch production's text outputs (the answer of an `openai` or text route)."""
    dims: int = Field(64, ge=2, le=4096)
    """Dimensions of the embeddings: of the built-in lexical embedder (feature hashing of word
    unigrams and bigrams, then a fixed random projection), or with `endpoint` the endpoint
    model's own dimension (its vectors of another length are counted, never added); vectors in
    the request must have this length."""
    features: int = Field(128, ge=8, le=512)
    """Random Fourier features of the MMD estimate (the reference keeps features² sums)."""
    bandwidth: float = Field(1.0, gt=0)
    """Gaussian kernel bandwidth σ on the unit-length embeddings."""
    seed: int = Field(0, ge=0)
    """Seed of the embedder's projection and of the random features: the same in every
    process, so sums from partitions and windows merge."""
    reference_size: int = Field(500, ge=50, le=100_000)
    """The first N items of each field (per partition) form the reference."""
    min_count: int = Field(100, ge=10)
    """Items the latest window needs before a state other than `insufficient`."""
    warn_alpha: float = Field(0.01, gt=0, lt=1)
    """p-value below which a field's drift state becomes `minor`."""
    alert_alpha: float = Field(0.001, gt=0, lt=1)
    """p-value below which a field's drift state becomes `major`."""
    max_chars: int = Field(20_000, ge=1)
    """A longer text is cut to this many characters before embedding (counted as
    `truncated`)."""
    max_items: int = Field(16, ge=1, le=1024)
    """Items taken at most per request and field; further ones are counted as `too_many`."""
    endpoint: EmbeddingEndpoint | None = None
    """Embed the texts with an OpenAI-compatible `/v1/embeddings` endpoint (TEI, vLLM, Ollama)
    instead of the built-in lexical embedder (none: built-in); its calls run in the
    comparator's assessor, off the proxy's path (docs/llm.md)."""

    @model_validator(mode="after")
    def _alphas(self) -> EmbeddingDrift:
        if self.alert_alpha > self.warn_alpha:
            raise ValueError("alert_alpha must not exceed warn_alpha")
        if not self.fields and not self.outputs:
            raise ValueError("give fields (JSON paths of texts or vectors) or outputs: true")
        return self


class Drift(_Strict):
    fields: list[DriftPath] = []
    """JSON paths into the request body (e.g. ``$.instances[*].amount``) to monitor for drift."""
    categorical: list[DriftPath] = []
    """JSON paths of categorical fields to monitor (top-K categories plus `other`)."""
    reference_file: str | None = None
    """
    CSV, JSONL or Parquet file (e.g. training data) to freeze the bins from; else the first
    requests.
    """
    psi_warn: float = Field(0.1, gt=0)
    """PSI at which a field's drift state becomes `minor`."""
    psi_alert: float = Field(0.25, gt=0)
    """PSI at which a field's drift state becomes `major`."""
    auto: bool = False
    """
    Watch every scalar input field of the request body, found as requests come (nested objects
    and arrays flattened to paths such as `$.instances[*].amount`), besides `fields`.
    """
    max_fields: int = Field(50, ge=1, le=1000)
    """With `auto`: input fields tracked at most; values of further fields are counted, not
    tracked."""
    max_depth: int = Field(4, ge=1, le=16)
    """With `auto`: how deep into nested objects and arrays fields are looked for; deeper values
    are counted, not tracked."""
    embedding: EmbeddingDrift | None = None
    """Embedding drift of text or vector input fields and of text outputs (none: off)."""


class Monitor(_Strict):
    """How production's own quality is judged over time (see docs/monitoring.md)."""

    reference_windows: int = Field(12, ge=1)
    """The first N windows with labels form the fixed reference."""
    current_windows: int = Field(6, ge=1)
    """The latest N windows with labels are compared with the reference."""
    min_labelled: int = Field(100, ge=1)
    """Labelled predictions needed on each side before a degradation state other than
    ``insufficient``."""
    degradation_margin: float = Field(0.0, ge=0)
    """How much worse than the reference (in the metric's units) counts as degraded."""


class Guardrails(_Strict):
    error_rate_delta: float | None = Field(0.01, ge=0, le=1)
    """Largest tolerated rise in the candidate's error rate over production's (none: off)."""
    timeout_rate_delta: float | None = Field(0.01, ge=0, le=1)
    """Largest tolerated rise in the candidate's timeout rate (none: off)."""
    latency_p95_ratio: float | None = Field(1.5, gt=0)
    """Largest tolerated candidate/production p95 latency ratio, beyond `latency_p95_slack_ms`
    (none: off). On by default: the candidate fails when its p95 exceeds 1.5 × production's
    p95 + 25 ms, once both sides have `min_pairs` latencies (a point estimate from the latency
    sketches, no interval). Shadow hardware slower than production's needs a larger ratio."""
    latency_p95_slack_ms: float = Field(25.0, ge=0)
    """Milliseconds a candidate's p95 may exceed `latency_p95_ratio` × production's p95 and
    still pass: a few milliseconds over a very fast production is noise, not a regression."""
    latency_p99_ratio: float | None = Field(None, gt=0)
    """Largest tolerated candidate/production p99 latency ratio (none: off)."""
    ttft_p99_ratio: float | None = Field(None, gt=0)
    """`openai` routes: largest tolerated candidate/production p99 time-to-first-token ratio,
    beyond `ttft_p99_slack_ms` (none: off). A point estimate from the TTFT sketches, judged
    once both sides have `min_pairs` TTFTs, like the latency ratios (docs/llm.md)."""
    ttft_p99_slack_ms: float = Field(25.0, ge=0)
    """Milliseconds a candidate's TTFT p99 may exceed `ttft_p99_ratio` × production's and
    still pass."""
    cost_ratio: float | None = Field(None, gt=0)
    """`openai` routes: largest tolerated candidate/production mean cost per request, from
    both models' `price` and the tokens of the pairs where both sides report them (none:
    off; needs a `price` on production and the candidate)."""
    agreement_floor: float | None = Field(None, ge=0, le=1)
    """Lowest tolerated agreement with production (none: off; agreement is reported either way)."""
    availability_delta: float | None = Field(0.01, ge=0, le=1)
    """
    Largest tolerated drop in the candidate's availability (share of sampled requests it gave a
    prediction for: not dropped, not failed, not NaN) below production's (none: off).
    """


class Policy(_Strict):
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Error budget of the verdict, split across the primary metric and active guardrails."""
    min_pairs: int = Field(200, ge=1)
    """Pairs needed before any verdict but hold."""
    min_labelled: int = Field(100, ge=1)
    """Labelled pairs needed before any verdict but hold."""
    primary_metric: str | None = None
    """Defaults by task: accuracy, log_loss, mae or exact_match."""
    mode: Literal["superiority", "non_inferiority"] = "superiority"
    """
    `superiority`: the candidate must be shown better. `non_inferiority`: no worse than
    `margin`.
    """
    margin: float = Field(0.0, ge=0)
    """The margin δ on the primary metric's paired difference."""
    guardrails: Guardrails = Guardrails()
    """Metrics that reject the candidate when shown worse than their threshold."""

    @model_validator(mode="after")
    def _margin(self) -> Policy:
        if self.mode == "non_inferiority" and self.margin <= 0:
            raise ValueError("mode 'non_inferiority' needs margin > 0")
        return self


class Route(_Strict):
    name: Name
    """Route name; it labels records, scores and metrics."""
    path_prefix: str = "/"
    """Requests whose path starts with this go to this route (the longest prefix wins; at
    equal prefixes, a route with a `host` wins over one without)."""
    host: str | None = None
    """When set, only requests with this Host (port ignored) match."""
    protocol: Protocol = "jsonpath"
    """The protocol the model server speaks, which says where the prediction lives in its
    answer. Left out, it is `jsonpath`, and `jsonpath` must be given."""
    task: Task = "classification"
    """How predictions are compared and scored."""
    output: str | None = None
    """Open Inference Protocol: the output tensor's name (default: the first output)."""
    jsonpath: str | None = None
    """For protocol ``jsonpath``: where the prediction lives, e.g. ``$.result.score``."""
    classes: list[str] | None = None
    """Class names, in output order, for class-probability outputs."""
    max_classes: int = Field(20, ge=2, le=200)
    """
    Classification: classes tracked in the per-class views when `classes` is not declared (the
    first ones seen); the rest count in `other`. Also the Bonferroni divisor of the per-class
    intervals (docs/comparator.md "Per-class views").
    """
    production: Model
    """The production model: every request goes there and the client gets its answer."""
    candidates: list[Candidate] = []
    """Candidate models that get a mirrored copy of a fraction of the requests."""
    noise: Noise | None = None
    """
    Mirror a fraction to production's own URL as a noise candidate (`noise: true`, with
    production's timeout and headers): the floor every candidate is read against.
    """
    monitor_fraction: float = Field(1.0, ge=0.0, le=1.0)
    """
    Share of requests (of the mirrored methods) whose production answer is recorded for
    monitoring production itself (quality against ground truth, drift): through their pair
    records, or a production-only record when the request was not mirrored.
    """
    mirror_methods: list[str] = ["POST"]
    """HTTP methods that are mirrored (a candidate that writes can do harm)."""
    capture: Capture = Capture()
    """What of the request is captured into records."""
    drift: Drift = Field(default_factory=Drift)
    """Input fields monitored for drift."""
    policy: Policy = Policy()
    """How the verdict is reached."""
    monitor: Monitor = Monitor()
    """How production's own quality over time is judged."""
    label_ttl_s: float = Field(3 * 86400, gt=0)
    """How long a pair waits for its label (and a label for its pair) before it is an orphan."""
    judge: Judge | None = None
    """A pairwise judge of the two answers (text routes): its preference is the paired
    metric `judge`, usable as `policy.primary_metric` (docs/llm.md). Its calls run in
    the comparator, off the proxy's path."""
    similarity: Similarity | None = None
    """Embedding similarity of the two answers (text routes), reported as a mean."""

    @field_validator("jsonpath")
    @classmethod
    def _jsonpath(cls, path: str | None) -> str | None:
        if path is not None:
            from shadowroute.core.extraction import ExtractError
            from shadowroute.core.extraction import compile_path as compile_jsonpath

            try:
                compile_jsonpath(path)
            except ExtractError as exc:
                raise ValueError(f"{exc.detail}; a path looks like $.result.score") from None
        return path

    @model_validator(mode="after")
    def _route(self) -> Route:
        if not self.path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/', got {self.path_prefix!r}")
        if self.protocol == "jsonpath" and not self.jsonpath:
            loc, message = protocol_problem("protocol" in self.model_fields_set)
            raise FieldProblem(loc, message)
        named = [c.name for c in self.candidates if c.rewrite and c.rewrite.model]
        if named and self.protocol not in _MODEL_IN_PATH:
            raise ValueError(
                f"rewrite.model (candidates {named}) needs a protocol that names the model in "
                f"the path ({', '.join(sorted(_MODEL_IN_PATH))}); use rewrite.path with "
                f"protocol {self.protocol!r}"
            )
        same = [c for c in self.candidates if self.noise and c.name == self.noise.name]
        if same and not same[0].noise:
            raise ValueError(f"noise.name {same[0].name!r} is a candidate that is not noise")
        if self.noise is not None and not same:
            p = self.production
            self.candidates.append(
                Candidate(
                    name=self.noise.name, url=p.url, timeout_s=p.timeout_s, version=p.version,
                    headers=p.headers, fraction=self.noise.fraction, noise=True, price=p.price,
                )
            )  # fmt: skip
        if (self.judge or self.similarity) and self.task != "text":
            raise ValueError(
                f"judge and similarity compare texts: they need task 'text' (this route's is "
                f"{self.task!r})"
            )
        if self.policy.primary_metric == "judge" and self.judge is None:
            raise ValueError("policy.primary_metric 'judge' needs a judge on the route")
        names = [self.production.name, *(c.name for c in self.candidates)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique within a route, repeated: {dupes}")
        self._llm_settings()
        return self

    def _llm_settings(self) -> None:
        """Prices and the TTFT and cost guardrails are for ``openai`` routes, where tokens and
        the first token are measured; a cost guardrail needs every model's price."""
        g = self.policy.guardrails
        models = [self.production, *self.candidates]
        if self.protocol != "openai":
            guards = [k for k in ("ttft_p99_ratio", "cost_ratio") if getattr(g, k) is not None]
            if guards:
                raise ValueError(
                    f"policy.guardrails {guards} need protocol 'openai' (time to first token "
                    f"and tokens are measured on openai routes only), not {self.protocol!r}"
                )
            priced = [m.name for m in models if m.price is not None]
            if priced:
                raise ValueError(
                    f"price (models {priced}) needs protocol 'openai' (tokens are measured on "
                    f"openai routes only), not {self.protocol!r}"
                )
        if g.cost_ratio is not None:
            unpriced = [m.name for m in models if m.price is None]
            if unpriced:
                raise ValueError(
                    f"policy.guardrails.cost_ratio needs a price on every model of the route; "
                    f"none on {unpriced}"
                )

    @property
    def sensitive_headers(self) -> frozenset[str]:
        extra = (h.lower() for h in self.capture.sensitive_headers)
        return frozenset((*ALWAYS_SENSITIVE, *extra))


class Breaker(_Strict):
    failures: int = Field(5, ge=1)
    """Consecutive failures (connect, timeout, 5xx) that open a candidate's circuit."""
    open_s: float = Field(10.0, gt=0)
    """Seconds before a half-open probe is let through."""


class _Assess(_CallsOut):
    """What the judge and the embedding similarity share: an OpenAI-compatible endpoint,
    their own sampling, rate limit, budget, timeout and breaker (docs/llm.md)."""

    url: UpstreamUrl
    """Base URL of the OpenAI-compatible server (`http://` or `https://`); the API path
    (`/v1/chat/completions` or `/v1/embeddings`) is appended."""
    model: str = Field(min_length=1, max_length=256)
    """The model name sent in each call's body (`model`)."""
    sample_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Share of the route's pairs assessed, fixed by request id (independent of the mirror
    sampling)."""
    rate_per_s: float = Field(2.0, gt=0)
    """Most calls a second (a token bucket of one second's calls); a pair that finds no tokens
    is skipped and counted (`rate_limited`), never queued."""
    max_calls: int | None = Field(10_000, ge=1)
    """Budget: calls made at most, over the life of the comparator's state (calls recorded
    before a restart count); beyond it pairs are skipped (`budget_exhausted`). None: no
    limit."""
    timeout_s: float = Field(30.0, gt=0, le=600)
    """Time allowed for one call's complete answer."""
    breaker: Breaker = Field(default_factory=lambda: Breaker())
    """Consecutive failed calls that stop calls for `open_s` (then one probe)."""
    max_chars: int = Field(8000, ge=64, le=1_000_000)
    """The request and each answer are cut to this many characters before they are sent
    (counted, `truncated`)."""
    headers: ExtraHeaders = {}
    """Extra headers sent with each call."""
    secret_headers: SecretHeaderRefs = {}
    """Extra headers whose values are secrets (e.g. `Authorization: env:JUDGE_KEY`), each
    `env:VARIABLE` or `file:PATH`, read at start."""


class Judge(_Assess):
    """A pairwise judge (OpenAI-compatible chat): which answer is better by `rubric`."""

    rubric: str = Field(min_length=1, max_length=20_000)
    """What makes one answer better than the other, in the judge's words."""
    concurrency: int = Field(4, ge=1, le=256)
    """Pairs judged at once."""


class Similarity(_Assess):
    """Embedding similarity of the answers (OpenAI-compatible `/v1/embeddings`)."""

    sample_fraction: float = Field(1.0, ge=0.0, le=1.0)
    """Share of the route's pairs measured, fixed by request id."""
    rate_per_s: float = Field(20.0, gt=0)
    """Most calls a second (one call per pair: both answers in one request)."""
    timeout_s: float = Field(10.0, gt=0, le=600)
    """Time allowed for one call's complete answer."""


class EmbeddingEndpoint(_Assess):
    """An OpenAI-compatible `/v1/embeddings` endpoint for embedding drift: one call per request."""

    sample_fraction: float = Field(1.0, ge=0.0, le=1.0)
    """Share of the requests whose texts are embedded, fixed by request id (the others are
    counted as `unsampled`); vectors already in the request are always used."""
    rate_per_s: float = Field(20.0, gt=0)
    """Most calls a second (one call per request); a request that finds no tokens is skipped
    and counted (`rate_limited`)."""
    timeout_s: float = Field(10.0, gt=0, le=600)
    """Time allowed for one call's complete answer."""
    max_chars: int = Field(8000, ge=64, le=1_000_000)
    """Each text is cut to this many characters before it is sent (counted in the assessor's
    `truncated`), after the drift's own `max_chars`."""


class Mirror(_Strict):
    enabled: bool = True
    """Global mirroring switch at start; `PUT /v1/mirroring` changes it without a restart (kept
    across restarts in `control.state_path`)."""
    control_header: str = "x-shadow-mirror"
    """A request header: ``force`` mirrors regardless of sampling, ``skip`` never mirrors."""
    marker_header: str = "x-shadow-request"
    """Sent to candidates (value ``1``) so they can avoid side effects. A client's own copy
    is removed before production and candidates see the request."""
    control_from: list[str] = []
    """Client addresses or networks (`10.0.0.0/8`) whose `control_header` is honoured. From
    anywhere else it is honoured only with the admin token (`force; token=<admin.token>`),
    and otherwise ignored and counted; it is never forwarded."""
    private_headers: list[str] = ["authorization", "cookie"]
    """Client headers (credentials) sent to production but not to candidates, unless a
    candidate sets `forward_private_headers`."""
    capture_limit_bytes: int = Field(1 << 20, ge=0)
    """Requests with bodies larger than this are forwarded but not mirrored (counted)."""
    breaker: Breaker = Breaker()
    """The per-candidate circuit breaker."""

    @model_validator(mode="after")
    def _networks(self) -> Mirror:
        for net in self.control_from:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"control_from: not an address or network: {net!r}") from None
        return self


EmbeddingDrift.model_rebuild()  # `endpoint` names `EmbeddingEndpoint`, defined after it
Drift.model_rebuild()
Route.model_rebuild()


class ProxySettings(_Strict):
    request_id_header: str = "x-request-id"
    """Header carrying the request id; generated when absent, sent to every upstream and back."""
    max_header_bytes: int = Field(64 << 10, ge=1024)
    """Largest request head accepted (431 beyond)."""
    max_headers: int = Field(100, ge=8)
    """Most request headers accepted (431 beyond)."""
    upgrade: Literal["refuse", "pass"] = "refuse"
    """`refuse`: connection upgrades (WebSocket) are answered 501. `pass`: sent to production,
    and after its 101 the bytes flow both ways untouched (never mirrored)."""
    connect_timeout_s: float = Field(2.0, gt=0)
    """Time allowed to open an upstream connection."""
    idle_timeout_s: float = Field(60.0, gt=0)
    """Idle client keep-alive connections are closed after this."""
    head_timeout_s: float = Field(10.0, gt=0)
    """A client connection must send a whole request head within this from its first byte
    (or from being opened); else it gets 408 and is closed. Checked about once a second."""
    max_connections: int = Field(10_000, ge=1)
    """Client connections open at most per data-plane process; beyond it a new connection gets
    503 and is closed."""
    max_body_buffer_bytes: int = Field(1 << 20, ge=64 << 10)
    """Bytes of one request body held for production at most (while a connection is being
    opened, or in the connection's write buffer while production reads slower than the client
    sends); beyond it the client is not read until production catches up."""
    pool_size: int = Field(256, ge=1)
    """Idle keep-alive connections kept per upstream."""
    upstream_keepalive_s: float = Field(1.5, gt=0)
    """A pooled upstream connection idle for this long is not reused (a new one is opened).
    Keep it below the model servers' own idle keep-alive timeouts (gunicorn 2 s, uvicorn and
    Node 5 s): a request written on a connection the server is closing meets the close. A
    server's `Keep-Alive: timeout=N` shortens it for that server (to N less a margin of 10%,
    at least 0.25 s); `Connection: close` or `Keep-Alive: max=0` ends the connection after the
    answer."""
    shutdown_timeout_s: float = Field(10.0, gt=0)
    """On SIGTERM, how long in-flight client requests may take to finish."""
    mirror_drain_s: float = Field(2.0, ge=0)
    """On SIGTERM, how long in-flight mirrors may take after the clients are done."""
    forwarded_proto: Literal["http", "https"] = "http"
    """Value of X-Forwarded-Proto sent upstream."""


class Records(_Strict):
    queue_size: int = Field(65_536, ge=16)
    """Records waiting for the sink at most; beyond it records are dropped and counted."""
    max_response_bytes: int = Field(1 << 20, ge=1024)
    """Responses larger than this are not kept or parsed for the record, which says
    `too_large` (production's still reaches the client whole): one answer's prediction
    extraction runs on the data plane's event loop, and this bounds it. A candidate's answer is
    read no further than this: one whose `Content-Length` is larger is given up at its head,
    with none of its body read."""
    max_predictions: int = Field(10_000, ge=1)
    """Predictions one response may contribute to a record; beyond it that side says
    `too_large` and carries no output."""
    max_instances: int = Field(10_000, ge=1)
    """Instances (rows of `instances` / `inputs`, or of a top-level list) a captured request
    body may hold; beyond it the record carries no input and both sides say `too_large`."""
    max_stream_pieces: int = Field(4096, ge=16)
    """`openai` routes: body pieces of one answer whose arrival time is kept for the
    time-to-first-token and inter-token latency; past it the rest are not timed (counted in
    `shadowroute_limits_hit{limit="stream_pieces"}`) and the ITL covers the pieces
    kept."""
    max_json_values: int = Field(100_000, ge=100)
    """JSON values (numbers, strings, arrays, objects) a captured request body or a model's
    answer may hold to be parsed on the data plane's event loop, counted from the bytes
    before parsing (commas and brackets: a scan, not a parse). An answer over it is
    `too_large`; a request body over it leaves the record without `input` (the predictions
    are still compared). At the default one parse holds the loop for roughly 5-15 ms."""
    jsonl_path: str | None = None
    """Also write every pair record to rotating JSONL files under this path."""
    jsonl_max_bytes: int = Field(64 << 20, ge=1024)
    """Size at which the JSONL file rotates."""
    jsonl_keep: int = Field(10, ge=1)
    """Rotated JSONL files kept."""


class Comparator(_Strict):
    state_path: str = "./shadowroute-state.sqlite"
    """SQLite file of the comparator: pending joins, aggregates and input positions."""
    windows: list[Literal["hour", "day"]] = ["hour", "day"]
    """Time windows scores are kept for, besides the cumulative ones."""
    on_state_mismatch: Literal["refuse", "keep", "reset"] = "refuse"
    """
    When the state file holds other routes or models than the config: `refuse` to start and say
    what differs; `keep` the file (its other entries are ignored, the new config is recorded);
    `reset`: move the file aside (`<state_path>.<time>.bak`) and start fresh. The command-line
    flag `--state-mode` overrides it.
    """
    idle_expiry_s: float | None = Field(None, gt=0)
    """
    Kafka: when a partition has been read to its end and no record came for this long, pending
    pairs and labels whose TTL ended by the wall clock expire, so orphans are counted on a quiet
    stream. None (the default): by record time only, which a rebuild from the topics repeats
    exactly; with it, a label arriving after its pair expired so is an orphan, where a rebuild
    would join them. The embedded comparator always expires on its clock.
    """


class Labels(_Strict):
    max_future_s: float = Field(300.0, ge=0)
    """A label whose `ts` is further than this ahead of the time it is received is refused
    (`ts_in_future`): the clocks of the sender and the router may differ by this much."""
    max_age_s: float | None = Field(None, gt=0)
    """A label whose `ts` is further than this behind the time it is received is refused
    (`ts_too_old`); none: the longest `label_ttl_s` of the routes (it could join nothing)."""
    max_value_bytes: int = Field(4096, ge=16)
    """Largest label value, as JSON, accepted (`label_too_large` beyond)."""
    max_waiting_per_route: int = Field(1_000_000, ge=1)
    """Labels kept waiting for their pair, per route (labels without a route count as one
    more route); beyond it new ones that join nothing are refused (`backlog_full`, 429)."""


class OpsLog(_Strict):
    """When the operator's log speaks (logger `shadowroute.ops`): the counters are read every
    `interval_s`; one line per change of state, a lasting condition said again every
    `repeat_s`."""

    interval_s: float = Field(10.0, ge=0.1, le=3600)
    """How often the data plane's counters are read (the window a line speaks of)."""
    min_mirrors: int = Field(20, ge=1)
    """Mirrors that must end in a window before a candidate can be called failing."""
    fail_share: float = Field(0.5, gt=0.0, le=1.0)
    """Share of a window's mirrors ending without a prediction that makes a candidate failing."""
    recover_share: float = Field(0.1, ge=0.0, le=1.0)
    """Share under which a failing candidate is said to answer again."""
    repeat_s: float = Field(300.0, ge=1.0)
    """A lasting condition (failing, dropping) is said again after this long."""

    @model_validator(mode="after")
    def _shares(self) -> OpsLog:
        if self.recover_share > self.fail_share:
            raise ValueError("recover_share must not exceed fail_share")
        return self


EventType = Literal[
    "io.shadowroute.verdict.changed",
    "io.shadowroute.drift.exceeded",
    "io.shadowroute.drift.recovered",
    "io.shadowroute.production.degraded",
    "io.shadowroute.production.recovered",
    "io.shadowroute.labels.stale",
    "io.shadowroute.labels.resumed",
    "io.shadowroute.circuit.opened",
    "io.shadowroute.circuit.closed",
]
"""The CloudEvents types shadowroute emits (``shadowroute.events.cloudevents.EVENT_TYPES``)."""


def _check_webhook_url(url: str) -> str:
    parts = _http_url(url, "https://ci.example.com/hooks/shadowroute")
    if parts.username or parts.password or parts.fragment:
        raise ValueError("must not carry credentials or a fragment (use secret_headers)")
    return url


class Webhook(_Strict):
    """One HTTP endpoint events are POSTed to, signed per Standard Webhooks (docs/events.md)."""

    name: Name | None = None
    """Names the endpoint in metrics and `GET /v1/events/deliveries` (default: `webhook-<i>`)."""
    url: str
    """Where events are POSTed (`http://` or `https://`)."""
    secret: str
    """The signing secret, `env:VARIABLE` or `file:PATH`, whose value is `whsec_` followed by
    the base64 of 24 to 64 random bytes (Standard Webhooks); read at start."""
    types: list[EventType] = []
    """Event types sent to this endpoint (empty: every type)."""
    template: Any = None
    """A JSON body to send instead of the CloudEvent, with `{{ data.route }}`-style
    placeholders filled from the event (docs/events.md "Body templates"), e.g. a GitHub
    `repository_dispatch` body. None: the CloudEvent itself (`application/cloudevents+json`)."""
    headers: dict[str, str] = {}
    """Extra headers sent with each delivery."""
    secret_headers: dict[str, str] = {}
    """Extra headers whose values are secrets (`env:VARIABLE` or `file:PATH`, read at start),
    e.g. `Authorization` for GitHub (the value: `Bearer <token>`)."""
    timeout_s: float = Field(10.0, gt=0, le=300)
    """Time allowed for one attempt."""
    max_attempts: int = Field(8, ge=1, le=100)
    """Attempts per event before it is given up (counted as failed)."""
    backoff_s: float = Field(1.0, gt=0, le=3600)
    """Pause before the first retry; doubled each retry, jittered (half to all of it)."""
    max_backoff_s: float = Field(60.0, gt=0, le=3600)
    """Longest pause between two attempts."""
    give_up_after_s: float = Field(900.0, gt=0, le=86400)
    """An event not delivered this long after it was queued is given up (counted as failed)."""
    _key: bytes = PrivateAttr(default=b"")
    _secret_values: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _check_webhook_url(url)

    @field_validator("secret")
    @classmethod
    def _secret_ref(cls, ref: str) -> str:
        if not ref.startswith(("env:", "file:")) or len(ref.partition(":")[2]) == 0:
            raise ValueError("must be env:VARIABLE or file:PATH (never the secret itself)")
        return ref

    @field_validator("headers", "secret_headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        bad = [h for h in headers if h.lower() in HOP_BY_HOP or not h.isascii()]
        bad += [h for h in headers if h.lower().startswith("webhook-")]
        if bad:
            raise ValueError(f"cannot set hop-by-hop, webhook-* or non-ASCII header(s) {bad}")
        return headers

    @field_validator("secret_headers")
    @classmethod
    def _secret_refs(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(not r.startswith(("env:", "file:")) for r in headers.values()):
            raise ValueError("each value must be env:VARIABLE or file:PATH")
        return headers

    @field_validator("template")
    @classmethod
    def _template(cls, template: Any) -> Any:
        problems = _template_problems(template)
        if problems:
            raise ValueError("; ".join(problems))
        return template

    @property
    def key(self) -> bytes:
        """The signing key, resolved at start (``parse_config``)."""
        return self._key

    def secret_header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self._secret_values.items()}


_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_TEMPLATE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


def _template_problems(template: Any, depth: int = 0) -> list[str]:
    """Placeholders that are not dotted paths (the same rule as
    ``shadowroute.events.template.check_template``)."""
    if depth > 32:
        return ["nested deeper than 32 levels"]
    if isinstance(template, str):
        out = [
            f"placeholder {m.group(0)!r} is not a dotted path like data.route"
            for m in _PLACEHOLDER.finditer(template)
            if not _TEMPLATE_PATH.match(m.group(1))
        ]
        if "{{" in _PLACEHOLDER.sub("", template):
            out.append(f"unclosed or nested placeholder in {template!r}")
        return out
    if isinstance(template, dict):
        return [p for v in template.values() for p in _template_problems(v, depth + 1)]
    if isinstance(template, list):
        return [p for v in template for p in _template_problems(v, depth + 1)]
    if template is None or isinstance(template, bool | int | float):
        return []
    return [f"not a JSON value: {type(template).__name__}"]


class Events(_Strict):
    """
    CloudEvents on changes of state (docs/events.md): to `<prefix>.events` with Kafka, and to
    signed HTTP webhooks in every mode. Never on the proxy's path: a bounded queue per
    destination; a full queue drops the event and counts it.
    """

    enabled: bool = True
    """Watch for changes of state and emit events."""
    interval_s: float = Field(5.0, ge=0.1, le=3600)
    """How often the read side (verdicts, production, circuits) is looked at."""
    instance: Name | None = None
    """The events' `source` is `/shadowroute/<instance>` (default: the host name)."""
    labels_stale_after_s: float | None = Field(3600.0, gt=0)
    """`labels.stale` when no label joined on a route for this long while predictions kept
    coming (none: never)."""
    kafka: bool = True
    """With `transport.kind: kafka`, produce every event to `<prefix>.events` (key: subject)."""
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    """Events waiting per destination; beyond it new ones are dropped and counted."""
    shutdown_grace_s: float = Field(5.0, ge=0, le=600)
    """At shutdown, how long pending deliveries may still take."""
    webhooks: list[Webhook] = []
    """HTTP endpoints events are POSTed to."""

    def webhook_names(self) -> list[str]:
        """Each webhook's name (``webhook-<i>`` when it has none)."""
        return [w.name or f"webhook-{i}" for i, w in enumerate(self.webhooks)]

    @model_validator(mode="after")
    def _names(self) -> Events:
        names = self.webhook_names()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes or "kafka" in names:
            raise ValueError(f"webhook names must be unique and not 'kafka': {dupes or ['kafka']}")
        return self


class Control(_Strict):
    state_path: str | None = None
    """JSON file keeping what the API set live (the mirroring switch, each candidate's
    on/off and fraction) and its change log, so they outlast a restart; none: next to
    `comparator.state_path` (`<its name without extension>-control.json`)."""

    def path(self, comparator_state: str) -> str:
        if self.state_path is not None:
            return self.state_path
        base, dot, ext = comparator_state.rpartition(".")
        stem = base if dot and "/" not in ext else comparator_state
        return f"{stem}-control.json"


class Config(_Strict):
    listen: Listen = Listen()
    """Client traffic."""
    admin: Admin = Admin()
    """The admin plane."""
    transport: Transport = Transport()
    """How records travel: embedded or Kafka."""
    proxy: ProxySettings = ProxySettings()
    """Data-plane settings."""
    mirror: Mirror = Mirror()
    """Mirroring settings shared by all routes."""
    records: Records = Records()
    """The pair record queue and optional JSONL copy."""
    comparator: Comparator = Comparator()
    """Comparator state and windows."""
    labels: Labels = Labels()
    """Rules for ground-truth labels: time bounds, value size, waiting backlog."""
    ops_log: OpsLog = OpsLog()
    """What the router logs of itself: start-up summary, breakers, failing candidates, drops."""
    events: Events = Events()
    """CloudEvents on changes of state, to Kafka and to signed webhooks (docs/events.md)."""

    control: Control = Control()
    """Live control through the API, kept across restarts."""
    routes: list[Route] = Field(min_length=1)
    """At least one route."""
    registry: Registry | None = None
    """A model registry to write verdicts to and read versions from (docs/registry.md)."""

    @model_validator(mode="after")
    def _unique_routes(self) -> Config:
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route names must be unique, repeated: {dupes}")
        return self

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)


# --- environment overrides -------------------------------------------------------------------

_ENV_SCALARS: dict[str, tuple[str, ...]] = {
    "SHADOWROUTE_LISTEN_HOST": ("listen", "host"),
    "SHADOWROUTE_LISTEN_PORT": ("listen", "port"),
    "SHADOWROUTE_ADMIN_HOST": ("admin", "host"),
    "SHADOWROUTE_ADMIN_PORT": ("admin", "port"),
    "SHADOWROUTE_API_TOKEN": ("admin", "token"),
    "SHADOWROUTE_KAFKA_BOOTSTRAP": ("transport", "bootstrap"),
    "SHADOWROUTE_KAFKA_SASL_USERNAME": ("transport", "security", "sasl_username"),
    "SHADOWROUTE_KAFKA_SASL_PASSWORD": ("transport", "security", "sasl_password"),
}


def _env_key(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in parts)


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Override addresses and secrets from the environment (documented in docs/config.md).

    ``SHADOWROUTE_ROUTE_<ROUTE>_PRODUCTION_URL`` and ``SHADOWROUTE_ROUTE_<ROUTE>_<MODEL>_URL``
    set upstream URLs (names upper-cased, non-alphanumerics as ``_``); ``..._REVISION`` in
    place of ``_URL`` sets a model's ``revision``.
    """
    for var, path in _ENV_SCALARS.items():
        if var in environ:
            node = raw
            for key in path[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
            node[path[-1]] = environ[var]
    routes = raw.get("routes")
    if isinstance(routes, list):
        for route in routes:
            if not isinstance(route, dict) or not isinstance(route.get("name"), str):
                continue
            prod = route.get("production")
            for key in ("url", "revision"):
                var = _env_key("SHADOWROUTE_ROUTE", route["name"], "PRODUCTION", key)
                if isinstance(prod, dict) and var in environ:
                    prod[key] = environ[var]
            cands = route.get("candidates")
            for cand in cands if isinstance(cands, list) else []:
                if isinstance(cand, dict) and isinstance(cand.get("name"), str):
                    for key in ("url", "revision"):
                        var = _env_key("SHADOWROUTE_ROUTE", route["name"], cand["name"], key)
                        if var in environ:
                            cand[key] = environ[var]
    return raw


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _describe(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind != "missing" and "input" in err and not isinstance(err["input"], dict | list):
        shown = repr(err["input"])
        if shown not in msg:
            msg += f" (got {shown})"
    return msg


def _strip_model_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic appends validator/union tags in some cases; keep only data keys.
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def _problem(err: Mapping[str, Any]) -> str:
    loc = _strip_model_loc(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):
        loc = (*loc, *cause.loc)
    return f"{_loc(loc)}: {_describe(err)}"


SecretReader = Callable[[str], str]
"""Reads a secret file's text (``secret_headers: {H: file:/path}``); raises ``OSError``."""


def no_secret_files(path: str) -> str:
    """The ``SecretReader`` of a document validated without file access: every file secret is
    a problem (``shadowroute.configfile`` passes the one that reads them)."""
    raise OSError(f"{path}: secret files are read only when the config is loaded from a file")


def config_problems(
    raw: object,
    environ: Mapping[str, str] | None = None,
    read_secret: SecretReader = no_secret_files,
) -> tuple[Config | None, list[str]]:
    """Validate an already-parsed document: the config (None when there is any problem) and
    every problem found, each ``path: what is wrong`` — the model's own checks, the checks
    across sections and the secret headers, all in one pass. ``environ`` (none when None)
    overrides addresses and secrets; ``read_secret`` reads secret files."""
    if not isinstance(raw, dict):
        return None, ["(top level): must be a mapping of keys to values"]
    env: Mapping[str, str] = {} if environ is None else environ
    raw = apply_env(raw, env)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems += [_problem(e) for e in exc.errors()]
    problems += [f"{_loc(loc)}: {message}" for loc, message in cross_problems(raw)]
    if config is not None:
        problems += _resolve_secrets(config, env, read_secret)
        problems += [f"{_loc(loc)}: {message}" for loc, message in registry_problems(config)]
        problems += _resolve_registry_token(config, env, read_secret)
        problems += _resolve_webhook_secrets(config, env, read_secret)
    problems = list(dict.fromkeys(problems))
    return (None if problems else config), problems


def parse_config(
    raw: object,
    environ: Mapping[str, str] | None = None,
    read_secret: SecretReader = no_secret_files,
) -> Config:
    """Validate an already-parsed document (a dict) into a Config; ``ConfigError`` with every
    problem when it is not valid."""
    config, problems = config_problems(raw, environ, read_secret)
    if config is None:
        raise ConfigError(problems)
    return config


def _resolve_secrets(
    config: Config, environ: Mapping[str, str], read_secret: SecretReader
) -> list[str]:
    """Read every model's ``secret_headers`` (environment variable or file) once, at start;
    the problems found."""
    problems: list[str] = []
    for i, route in enumerate(config.routes):
        models = [("production", route.production)]
        models += [(f"candidates[{j}]", c) for j, c in enumerate(route.candidates)]
        for where, model in models:
            for header, ref in model.secret_headers.items():
                path = f"routes[{i}].{where}.secret_headers.{header}"
                value, problem = _secret_value(ref, path, environ, read_secret)
                if problem is not None:
                    problems.append(problem)
                    continue
                assert value is not None
                model._secrets[header] = SecretStr(value)
        emb = route.drift.embedding
        assessors = [
            ("judge", route.judge),
            ("similarity", route.similarity),
            ("drift.embedding.endpoint", emb.endpoint if emb is not None else None),
        ]
        for where, part in assessors:
            if part is None:
                continue
            for header, ref in part.secret_headers.items():
                path = f"routes[{i}].{where}.secret_headers.{header}"
                value, problem = _secret_value(ref, path, environ, read_secret)
                if problem is not None:
                    problems.append(problem)
                    continue
                assert value is not None
                part._secrets[header] = SecretStr(value)
    return problems


# --- the model registry (docs/registry.md) ----------------------------------------------------

_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def _alias(value: str | None) -> str | None:
    if value is None:
        return None
    if not _ALIAS.match(value):
        raise ValueError("an alias is 1 to 255 letters, digits, '_' or '-'")
    if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
        raise ValueError(f"{value!r} is reserved by MLflow (latest, v<number>)")
    return value


RegistryAlias = Annotated[str, AfterValidator(_alias)]


class RegistryBinding(_Strict):
    """Which registered model version a shadowroute model is (docs/registry.md)."""

    route: Name
    """The route's `name`."""
    model: Name
    """The model's `name` in that route: production's or a candidate's."""
    registered_model: str = Field(min_length=1, max_length=256)
    """The registered model's name in MLflow."""
    version: str | None = None
    """A fixed version of the registered model (`7`). Give `version` or `alias`."""
    alias: RegistryAlias | None = None
    """Or the alias that names the version (`challenger`, `champion`), read from the registry
    when an event comes and for lineage."""
    promote_alias: RegistryAlias | None = None
    """Candidates only: on a `promote` verdict, point this alias (`champion`) at the
    candidate's version (moving it away from the version that had it). Unset: tags only,
    no alias ever moves."""

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and not re.fullmatch(r"[1-9][0-9]{0,17}", value):
            raise ValueError("must be a version number of the registered model, like 7")
        return value

    @model_validator(mode="after")
    def _one_version(self) -> RegistryBinding:
        if (self.version is None) == (self.alias is None):
            raise ValueError("give exactly one of version (a number) or alias")
        if self.promote_alias is not None and self.promote_alias == self.alias:
            raise FieldProblem(
                ("promote_alias",), "must differ from alias (the alias the version is read from)"
            )
        return self


class Registry(_Strict):
    """Verdicts written to a model registry, and registry versions in lineage (registry.md)."""

    kind: Literal["mlflow"] = "mlflow"
    """The registry: an MLflow tracking server (REST API 2.0)."""
    tracking_uri: str
    """Base URL of the MLflow tracking server, like `http://mlflow.ml.svc:5000`."""
    token: str | None = None
    """Bearer token sent to the server, as `env:VARIABLE` or `file:PATH` (read at start)."""
    public_base_url: str
    """The admin API's URL as people reach it (`https://shadowroute.example.com`): the
    evidence link written on each version is this plus `/v1/routes/.../decision`."""
    timeout_s: float = Field(5.0, gt=0, le=120)
    """Time allowed for one call to the registry."""
    retries: int = Field(3, ge=0, le=10)
    """Further attempts after a failed call (no answer, 429 or 5xx); 4xx are not retried."""
    backoff_s: float = Field(0.5, ge=0, le=60)
    """Wait before the first retry; doubled for each further one."""
    refresh_s: float = Field(60.0, ge=1, le=86_400)
    """How often lineage re-reads each bound model's version from the registry."""
    models: list[RegistryBinding] = Field(min_length=1)
    """Which registered model version each shadowroute model is."""
    _token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("tracking_uri", "public_base_url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _check_url(url)

    @field_validator("token")
    @classmethod
    def _token_ref(cls, ref: str | None) -> str | None:
        if ref is not None and not ref.startswith(("env:", "file:")):
            raise ValueError("must be env:VARIABLE or file:PATH")
        return ref

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        seen: set[tuple[str, str]] = set()
        for i, b in enumerate(self.models):
            if (b.route, b.model) in seen:
                raise FieldProblem(("models", i), f"{b.route}/{b.model} is bound twice")
            seen.add((b.route, b.model))
        return self

    def token_value(self) -> str | None:
        """The bearer token, resolved at start (``parse_config``)."""
        return None if self._token is None else self._token.get_secret_value()

    def binding(self, route: str, model: str) -> RegistryBinding | None:
        return next((b for b in self.models if b.route == route and b.model == model), None)


Config.model_rebuild()  # `Config.registry` names `Registry`, defined after it


def registry_problems(config: Config) -> list[tuple[tuple[int | str, ...], str]]:
    """Bindings that name no route or model of the config, and `promote_alias` on
    production."""
    out: list[tuple[tuple[int | str, ...], str]] = []
    if config.registry is None:
        return out
    for i, b in enumerate(config.registry.models):
        at: tuple[int | str, ...] = ("registry", "models", i)
        route = config.route(b.route)
        if route is None:
            out.append(((*at, "route"), f"no route named {b.route!r}"))
            continue
        if b.model == route.production.name:
            if b.promote_alias is not None:
                out.append(((*at, "promote_alias"), "only a candidate's version can be promoted"))
        elif b.model not in [c.name for c in route.candidates]:
            out.append(((*at, "model"), f"route {b.route!r} has no model named {b.model!r}"))
    return out


def _resolve_registry_token(
    config: Config, environ: Mapping[str, str], read_secret: SecretReader
) -> list[str]:
    """Read the registry's bearer token once, at start; the problems."""
    reg = config.registry
    if reg is None or reg.token is None:
        return []
    value, problem = _secret_value(reg.token, "registry.token", environ, read_secret)
    if problem is not None:
        return [problem]
    if not value:
        return ["registry.token: the value must be one line of ASCII"]
    reg._token = SecretStr(value)
    return []


def _secret_value(
    ref: str, path: str, environ: Mapping[str, str], read_secret: SecretReader
) -> tuple[str | None, str | None]:
    """(value, None) of an ``env:``/``file:`` reference, or (None, the problem)."""
    kind, _, name = ref.partition(":")
    if kind == "env":
        value = environ.get(name)
        if value is None:
            return None, f"{path}: environment variable {name} is not set"
    else:
        try:
            value = read_secret(name).rstrip("\r\n")
        except OSError as exc:
            return None, f"{path}: cannot read {name}: {exc.strerror or exc}"
    if not value.isascii() or "\n" in value or "\r" in value:
        return None, f"{path}: the value must be one line of ASCII"
    return value, None


def webhook_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret ``whsec_<base64 of 24-64 bytes>``."""
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        raise ValueError("the secret must start with whsec_ followed by base64 (Standard Webhooks)")
    try:
        key = base64.b64decode(secret[6:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part of the secret after whsec_ is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret's key is {len(key)} bytes; it must be 24 to 64 bytes")
    return key


def _resolve_webhook_secrets(
    config: Config, environ: Mapping[str, str], read_secret: SecretReader
) -> list[str]:
    """Read every webhook's signing secret and secret headers once, at start; the problems."""
    problems: list[str] = []
    for i, hook in enumerate(config.events.webhooks):
        where = f"events.webhooks[{i}]"
        value, problem = _secret_value(hook.secret, f"{where}.secret", environ, read_secret)
        if problem is not None:
            problems.append(problem)
        elif value is not None:
            try:
                hook._key = webhook_key(value)
            except ValueError as exc:
                problems.append(f"{where}.secret: {exc}")
        for header, ref in hook.secret_headers.items():
            path = f"{where}.secret_headers.{header}"
            value, problem = _secret_value(ref, path, environ, read_secret)
            if problem is not None:
                problems.append(problem)
            elif value is not None:
                hook._secret_values[header] = SecretStr(value)
    return problems
