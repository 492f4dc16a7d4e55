"""Embedding drift: a built-in lexical embedder, random Fourier features and mergeable sums.

Texts (or vectors already in the request) become unit vectors x in R^D; each x is mapped to
random Fourier features φ(x) = √(2/M)·cos(Wᵀx + b) (Rahimi & Recht 2007), W ~ N(0, σ⁻²I),
b ~ U[0, 2π), so φ(x)·φ(y) ≈ exp(−‖x − y‖² / 2σ²), a Gaussian kernel. A window keeps only
sums (n, Σx, Σφ, Σ‖φ‖²; the reference also Σφφᵀ), so partitions and windows merge by adding.

From the sums:

- centroid shift ‖x̄_C − x̄_R‖ (and the cosine of the two centroids);
- MMD² of the RFF kernel: ``mmd2`` = ‖φ̄_R − φ̄_C‖² (the biased, V-statistic estimate) and
  ``mmd2_unbiased`` (the U-statistic: equal to the direct quadratic estimate with kernel
  φ(x)·φ(y), see ``mmd2_unbiased``);
- a p-value for "the window comes from the reference's distribution": under that hypothesis
  φ̄_R − φ̄_C is approximately N(0, (1/n_R + 1/n_C)·Σ), Σ the covariance of φ estimated on the
  reference, so ‖φ̄_R − φ̄_C‖² ≈ (1/n_R + 1/n_C)·Σ_j λ_j Z_j², λ the eigenvalues of Σ
  (Gretton et al. 2009, "A fast, consistent kernel two-sample test"). Its tail is drawn once
  per reference by Monte Carlo with a fixed seed, so a p-value is deterministic.

The formulas, the false-alarm rates and the detection delays measured by simulation are in
``docs/llm.md``.

>>> model = EmbeddingModel(dims=32, features=64)
>>> ref, cur = model.sums(second=True), model.sums()
>>> x, ok = model.embedder.embed([f"refund for order {i}" for i in range(300)])
>>> ref.add(x, model.rff(x))
>>> y, ok = model.embedder.embed([f"weather in city {i}" for i in range(100)])
>>> cur.add(y, model.rff(y))
>>> s = embedding_drift_summary(ref, cur, None, reference_size=300, min_count=100,
...                             warn_alpha=0.01, alert_alpha=0.001)
>>> s["state"], s["p_value"] < 0.001
('major', True)
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "ITEM_OUTCOMES",
    "AsyncEmbedder",
    "Embedder",
    "EmbeddingModel",
    "EmbeddingSums",
    "HashingEmbedder",
    "NullDistribution",
    "RandomFourierFeatures",
    "embed_items",
    "embedding_drift_summary",
    "mmd2_biased",
    "mmd2_unbiased",
    "split_items",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
EmbeddingState = Literal["stable", "minor", "major", "insufficient", "collecting_reference"]

HASH_BUCKETS: Final = 1 << 14
"""Feature-hashing buckets of the built-in embedder (before the random projection)."""
NULL_DRAWS: Final = 10_000
"""Monte Carlo draws of the null distribution (p-values resolve down to 1/NULL_DRAWS)."""
_WORD: Final = re.compile(r"\w+")


class Embedder(Protocol):
    """Texts to unit vectors, in the comparator's process, without I/O.

    ``embed`` returns one row per text (``dims`` columns) and a mask of the texts that gave a
    vector (a text without a word gives none)."""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> tuple[FloatArray, npt.NDArray[np.bool_]]: ...


class AsyncEmbedder(Protocol):
    """An embedder that needs I/O: the same contract as ``Embedder``, awaited off the proxy's
    path. (The configured ``/v1/embeddings`` endpoint is called by the comparator's assessor,
    which hands the vectors back as records: ``core.assessments.EmbeddingRecord``.)"""

    @property
    def name(self) -> str: ...

    @property
    def dims(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> tuple[FloatArray, npt.NDArray[np.bool_]]: ...


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class HashingEmbedder:
    """Lexical, not semantic: word unigrams and bigrams (lower-cased ``\\w+`` runs), each hashed
    (CRC-32) to one of ``HASH_BUCKETS`` buckets with a sign, the signed counts projected by a
    fixed Gaussian matrix (seeded) to ``dims`` dimensions, then L2-normalised. Texts that share
    words land close; synonyms do not. Deterministic across processes and machines.

    >>> e = HashingEmbedder(dims=16)
    >>> x, ok = e.embed(["refund my order", "refund my order please", "", "weather in Oslo"])
    >>> ok.tolist(), round(float(x[0] @ x[1]), 2) > round(float(x[0] @ x[3]), 2)
    ([True, True, False, True], True)
    """

    def __init__(self, dims: int = 64, seed: int = 0, buckets: int = HASH_BUCKETS) -> None:
        if dims < 1 or buckets < 2:
            raise ValueError("dims must be >= 1 and buckets >= 2")
        self._dims = dims
        self._buckets = buckets
        rng = np.random.default_rng([seed, 1])
        self._proj = rng.standard_normal((buckets, dims)).astype(np.float32)

    @property
    def name(self) -> str:
        return "hashing-lexical"

    @property
    def dims(self) -> int:
        return self._dims

    def embed(self, texts: Sequence[str]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        out = np.zeros((len(texts), self._dims), dtype=np.float64)
        for i, text in enumerate(texts):
            feats = _features(text)
            if not feats:
                continue
            h = np.fromiter(
                (zlib.crc32(f.encode("utf-8", "surrogatepass")) for f in feats),
                dtype=np.uint32,
                count=len(feats),
            )
            sign = np.where(h & np.uint32(0x80000000), -1.0, 1.0).astype(np.float32)
            out[i] = sign @ self._proj[h % np.uint32(self._buckets)]
        return _unit_rows(out)


def _unit_rows(x: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    norm = np.linalg.norm(x, axis=1)
    ok = np.isfinite(norm) & (norm > 0)
    x = np.where(ok[:, None], x / np.where(ok, norm, 1.0)[:, None], 0.0)
    return x, ok


class RandomFourierFeatures:
    """φ(x) = √(2/M)·cos(Wᵀx + b) with W (D×M) ~ N(0, σ⁻²), b ~ U[0, 2π), seeded: the same
    features in every process, so sums from different partitions add.

    >>> rff = RandomFourierFeatures(dims=3, features=4000, bandwidth=1.0)
    >>> x = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    >>> phi = rff(x); abs(float(phi[0] @ phi[1]) - math.exp(-1.0)) < 0.05
    True
    """

    def __init__(self, dims: int, features: int = 128, bandwidth: float = 1.0, seed: int = 0):
        if dims < 1 or features < 1 or not bandwidth > 0:
            raise ValueError("dims and features must be >= 1, bandwidth > 0")
        rng = np.random.default_rng([seed, 2])
        self.dims = dims
        self.features = features
        self.bandwidth = bandwidth
        self.w: FloatArray = rng.standard_normal((dims, features)) / bandwidth
        self.b: FloatArray = rng.uniform(0.0, 2.0 * math.pi, features)
        self._scale = math.sqrt(2.0 / features)

    def __call__(self, x: FloatArray) -> FloatArray:
        out: FloatArray = self._scale * np.cos(x @ self.w + self.b)
        return out

    def kernel(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """The exact Gaussian kernel the features approximate (for tests and docs)."""
        d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
        out: FloatArray = np.exp(-np.maximum(d2, 0.0) / (2.0 * self.bandwidth**2))
        return out


@dataclass
class EmbeddingSums:
    """Sufficient statistics of one window (or the reference): ``+`` merges exactly.

    ``second`` (Σφφᵀ) is kept for the reference only: it gives the null distribution."""

    n: int
    sum_x: FloatArray
    sum_phi: FloatArray
    sum_sq: float = 0.0
    """Σ‖φ(x_i)‖², for the unbiased estimate."""
    second: FloatArray | None = None

    @classmethod
    def empty(cls, dims: int, features: int, second: bool = False) -> EmbeddingSums:
        return cls(
            0,
            np.zeros(dims),
            np.zeros(features),
            0.0,
            np.zeros((features, features)) if second else None,
        )

    def add(self, x: FloatArray, phi: FloatArray | None) -> None:
        """Add rows ``x`` (unit vectors) and their features ``phi``."""
        if x.ndim != 2 or phi is None or phi.shape != (x.shape[0], self.sum_phi.size):
            raise ValueError("x must be a 2-d array of unit vectors")
        if x.shape[1] != self.sum_x.size:
            raise ValueError(f"expected {self.sum_x.size} dims, got {x.shape[1]}")
        self.n += int(x.shape[0])
        self.sum_x += x.sum(0)
        self.sum_phi += phi.sum(0)
        self.sum_sq += float((phi * phi).sum())
        if self.second is not None:
            self.second += phi.T @ phi

    def __add__(self, other: EmbeddingSums) -> EmbeddingSums:
        if other.sum_x.shape != self.sum_x.shape or other.sum_phi.shape != self.sum_phi.shape:
            raise ValueError("cannot merge embedding sums of different dims or features")
        second = None
        if self.second is not None and other.second is not None:
            second = self.second + other.second
        return EmbeddingSums(
            self.n + other.n,
            self.sum_x + other.sum_x,
            self.sum_phi + other.sum_phi,
            self.sum_sq + other.sum_sq,
            second,
        )

    def copy(self) -> EmbeddingSums:
        return EmbeddingSums(
            self.n,
            self.sum_x.copy(),
            self.sum_phi.copy(),
            self.sum_sq,
            None if self.second is None else self.second.copy(),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "sum_x": self.sum_x.tolist(),
            "sum_phi": self.sum_phi.tolist(),
            "sum_sq": self.sum_sq,
        }
        if self.second is not None:
            # symmetric: the upper triangle, row by row
            out["second"] = self.second[np.triu_indices(self.sum_phi.size)].tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingSums:
        phi = np.asarray(data["sum_phi"], dtype=np.float64)
        second = None
        if data.get("second") is not None:
            m = phi.size
            second = np.zeros((m, m))
            iu = np.triu_indices(m)
            second[iu] = np.asarray(data["second"], dtype=np.float64)
            second = second + np.triu(second, 1).T
        return cls(
            int(data["n"]),
            np.asarray(data["sum_x"], dtype=np.float64),
            phi,
            float(data["sum_sq"]),
            second,
        )


def mmd2_biased(ref: EmbeddingSums, cur: EmbeddingSums) -> float:
    """‖φ̄_R − φ̄_C‖²: the V-statistic MMD² of the RFF kernel (what the test reads)."""
    d = ref.sum_phi / ref.n - cur.sum_phi / cur.n
    return float(d @ d)


def mmd2_unbiased(ref: EmbeddingSums, cur: EmbeddingSums) -> float:
    """The U-statistic MMD² of the RFF kernel k(x, y) = φ(x)·φ(y):

    (‖Sφ_R‖² − Σ‖φ_i‖²)/(n_R(n_R − 1)) + (same for C) − 2·Sφ_R·Sφ_C/(n_R n_C),

    exactly the quadratic-time estimate Σ_{i≠j} k(r_i, r_j)/(n_R(n_R−1)) + … − 2 Σ k(r_i,
    c_j)/(n_R n_C), from sums alone. Needs two items on each side."""
    if ref.n < 2 or cur.n < 2:
        raise ValueError("the unbiased estimate needs two items on each side")
    a, b = ref.sum_phi, cur.sum_phi
    within_r = (a @ a - ref.sum_sq) / (ref.n * (ref.n - 1))
    within_c = (b @ b - cur.sum_sq) / (cur.n * (cur.n - 1))
    return float(within_r + within_c - 2.0 * (a @ b) / (ref.n * cur.n))


@dataclass
class NullDistribution:
    """Draws of Σ_j λ_j Z_j² (λ: eigenvalues of the reference's feature covariance), sorted;
    the null of ‖φ̄_R − φ̄_C‖² is (1/n_R + 1/n_C) times this."""

    draws: FloatArray

    @classmethod
    def from_reference(
        cls, ref: EmbeddingSums, draws: int = NULL_DRAWS, seed: int = 0
    ) -> NullDistribution:
        if ref.second is None or ref.n < 2:
            raise ValueError("the reference needs its second moments and two items")
        mean = ref.sum_phi / ref.n
        cov = ref.second / ref.n - np.outer(mean, mean)
        cov *= ref.n / (ref.n - 1)
        lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
        rng = np.random.default_rng([seed, 3])
        out = np.empty(draws)
        chunk = 2000
        for start in range(0, draws, chunk):
            z = rng.standard_normal((min(chunk, draws - start), lam.size))
            out[start : start + z.shape[0]] = (z * z) @ lam
        out.sort()
        return cls(out)

    def p_value(self, stat: float, scale: float) -> float:
        """P(scale·Σλ_j Z_j² ≥ stat), at least 1/(draws + 1)."""
        above = self.draws.size - int(np.searchsorted(self.draws * scale, stat, side="left"))
        return (above + 1) / (self.draws.size + 1)

    def quantile(self, q: float, scale: float) -> float:
        return float(np.quantile(self.draws, q) * scale)


@dataclass
class EmbeddingModel:
    """What a route's embedding drift needs, built once from the configuration: the embedder
    and the random features (both seeded, the same in every process)."""

    dims: int = 64
    features: int = 128
    bandwidth: float = 1.0
    seed: int = 0
    source: str | None = None
    """Where texts are embedded when not by the built-in embedder (an endpoint's
    ``url#model``): part of the signature, so sums of two embedders never add."""
    embedder: Embedder = field(init=False)
    rff: RandomFourierFeatures = field(init=False)

    def __post_init__(self) -> None:
        self.embedder = HashingEmbedder(self.dims, self.seed)
        self.rff = RandomFourierFeatures(self.dims, self.features, self.bandwidth, self.seed)

    @property
    def signature(self) -> str:
        """What sums made with this model depend on: equal signatures, sums that add."""
        name = self.embedder.name if self.source is None else f"endpoint:{self.source}"
        parts = (name, self.dims, self.features, f"{self.bandwidth:g}", self.seed)
        return "/".join(str(p) for p in parts)

    def sums(self, second: bool = False) -> EmbeddingSums:
        return EmbeddingSums.empty(self.dims, self.features, second)

    def vectors(self, rows: Sequence[Sequence[float]]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """Vectors already in the request (each ``dims`` numbers), L2-normalised; a zero or
        non-finite vector gives none."""
        if not rows:
            return np.zeros((0, self.dims)), np.zeros(0, dtype=np.bool_)
        return _unit_rows(np.asarray(rows, dtype=np.float64).reshape(len(rows), self.dims))


def embed_items(
    model: EmbeddingModel,
    texts: Sequence[str],
    vectors: Sequence[Sequence[float]],
    counts: dict[str, int],
) -> FloatArray:
    """Unit vectors of ``texts`` (by the model's embedder) then of ``vectors``; texts without
    a word count as ``empty``, zero or non-finite vectors as ``bad_vector``."""
    parts: list[FloatArray] = []
    if texts:
        x, ok = model.embedder.embed(texts)
        _keep(x, ok, "empty", parts, counts)
    if vectors:
        x, ok = model.vectors(vectors)
        _keep(x, ok, "bad_vector", parts, counts)
    out = np.concatenate(parts) if parts else np.zeros((0, model.dims))
    if out.shape[0]:
        _bump(counts, "items", int(out.shape[0]))
    return out


def _keep(
    x: FloatArray,
    ok: npt.NDArray[np.bool_],
    reason: str,
    parts: list[FloatArray],
    counts: dict[str, int],
) -> None:
    bad = int(ok.size - ok.sum())
    if bad:
        _bump(counts, reason, bad)
    parts.append(x[ok])


def embedding_drift_summary(
    ref: EmbeddingSums,
    cur: EmbeddingSums | None,
    null: NullDistribution | None,
    *,
    reference_size: int,
    min_count: int,
    warn_alpha: float,
    alert_alpha: float,
) -> dict[str, Any]:
    """One field's embedding drift: distances of the latest window from the reference, the
    p-value and the state (``major`` when p < alert_alpha, ``minor`` when p < warn_alpha).
    ``null`` is the reference's null distribution (built when None and needed)."""
    n = 0 if cur is None else cur.n
    out: dict[str, Any] = {"kind": "embedding", "n": n, "reference_n": ref.n}
    if ref.n < reference_size:
        out["state"] = "collecting_reference"
        return out
    if cur is None or cur.n < max(min_count, 2):
        out["state"] = "insufficient"
        return out
    if null is None:
        null = NullDistribution.from_reference(ref)
    xr, xc = ref.sum_x / ref.n, cur.sum_x / cur.n
    nr, nc = float(np.linalg.norm(xr)), float(np.linalg.norm(xc))
    scale = 1.0 / ref.n + 1.0 / cur.n
    stat = mmd2_biased(ref, cur)
    p = null.p_value(stat, scale)
    out.update(
        mmd2=stat,
        mmd2_unbiased=mmd2_unbiased(ref, cur),
        p_value=p,
        threshold_minor=null.quantile(1.0 - warn_alpha, scale),
        threshold_major=null.quantile(1.0 - alert_alpha, scale),
        centroid_shift=float(np.linalg.norm(xr - xc)),
        centroid_cosine=float(xr @ xc / (nr * nc)) if nr > 0 and nc > 0 else None,
        state="major" if p < alert_alpha else "minor" if p < warn_alpha else "stable",
    )
    return out


ITEM_OUTCOMES: Final = (
    "items",
    "truncated",
    "empty",
    "unusable",
    "bad_vector",
    "too_many",
    "unsampled",
    "not_embedded",
)
"""What happened to the values a field selected: embedded (``items``; ``truncated`` ones
among them), or left out: a text without a word (``empty``), a value neither text nor vector
(``unusable``), a vector of the wrong length or not finite (``bad_vector``), beyond
``max_items`` per request (``too_many``); with an endpoint, texts of requests outside its
``sample_fraction`` (``unsampled``) and texts whose call failed or was skipped
(``not_embedded``: the reason is in the assessor's counters)."""


def split_items(
    values: Sequence[Any],
    dims: int,
    max_chars: int,
    max_items: int,
    texts: list[str],
    vectors: list[list[float]],
    counts: dict[str, int],
) -> None:
    """Sort one request's selected values into ``texts`` and ``vectors``: a string is a text,
    an array of ``dims`` numbers a vector, an array of strings or of vectors holds several
    items. At most ``max_items`` are taken; the rest is counted in ``counts``.

    >>> t, v, c = [], [], {}
    >>> split_items(["hi", [1, 0], ["a", "b"], {"x": 1}, [1, 2, 3]], 2, 100, 3, t, v, c)
    >>> t, v, sorted(c.items())
    (['hi', 'a'], [[1, 0]], [('bad_vector', 1), ('too_many', 1), ('unusable', 1)])
    """
    taken = 0
    for value in values:
        if isinstance(value, list) and value and isinstance(value[0], str | list):
            items: Sequence[Any] = value
        else:
            items = (value,)
        for item in items:
            if isinstance(item, str):
                if taken >= max_items:
                    _bump(counts, "too_many")
                    continue
                taken += 1
                if len(item) > max_chars:
                    _bump(counts, "truncated")
                    item = item[:max_chars]
                texts.append(item)
            elif isinstance(item, list) and item and all(_is_number(v) for v in item):
                if len(item) != dims:
                    _bump(counts, "bad_vector")
                    continue
                if taken >= max_items:
                    _bump(counts, "too_many")
                    continue
                taken += 1
                vectors.append(item)
            else:
                _bump(counts, "unusable")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n
