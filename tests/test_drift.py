"""Drift: frozen bins, mergeable histograms, distances checked against scipy, and streams."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, ks_2samp, wasserstein_distance

from shadowroute.comparator.reference import load_reference
from shadowroute.core import drift, drift_fields
from shadowroute.core.drift import (
    DriftAccumulator,
    FrozenBins,
    Histogram,
    drift_state,
    drift_summary,
    js_distance,
    ks_binned,
    psi,
    reference_from_rows,
    wasserstein_binned,
    wasserstein_binned_normed,
)
from shadowroute.core.drift_fields import PathError, PathSet, compile_path

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def hist(bins: FrozenBins, values: object) -> Histogram:
    h = Histogram(bins)
    h.add(values)  # type: ignore[arg-type]
    return h


def test_doctests() -> None:
    for mod in (drift, drift_fields):
        assert doctest.testmod(mod).failed == 0


# --- JSON paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "doc", "expected"),
    [
        ("$.features.age", {"features": {"age": 41}}, [41]),
        ("features.age", {"features": {"age": 41}}, [41]),
        ("$.instances[*].amount", {"instances": [{"amount": 1}, {"x": 2}, {"amount": 3}]}, [1, 3]),
        ("$.inputs[0].data[*]", {"inputs": [{"data": [1, 2]}, {"data": [9]}]}, [1, 2]),
        ("$.inputs[0].data", {"inputs": [{"data": [[1, 2], [3]]}]}, [1, 2, 3]),
        ("$.inputs[-1].data[1]", {"inputs": [{"data": [1, 2]}, {"data": [8, 9]}]}, [9]),
        ("$['odd key'].x", {"odd key": {"x": "a"}}, ["a"]),
        ('$["q"][5]', {"q": [1]}, []),
        ("$.a.b", {"a": 3}, []),
        ("$.a.*", {"a": {"x": 1, "y": 2}}, [1, 2]),
    ],
)
def test_paths(path: str, doc: object, expected: list[object]) -> None:
    assert compile_path(path).values(doc) == expected
    assert PathSet([path]).values(doc) == [expected]


def test_path_set_equals_paths_one_by_one() -> None:
    paths = [
        "$.instances[*].a",
        "$.instances[*].b",
        "$.instances[0].a",
        "$.instances",
        "$.instances[*].a",
        "$.meta.tags[*]",
        "$.meta",
        "$.missing.x",
    ]
    doc = {
        "instances": [{"a": 1, "b": [2, [3]]}, {"a": 4}, "x"],
        "meta": {"tags": ["p", "q"]},
    }
    expected = [compile_path(p).values(doc) for p in paths]
    ps = PathSet(paths)
    assert ps.values(doc) == expected
    out: list[list[object]] = [[0] for _ in paths]
    ps.extend(doc, out)
    assert out == [[0, *e] for e in expected]


@pytest.mark.parametrize("bad", ["", "$.", "$[abc]", "$.a[", "$..a"])
def test_bad_paths_name_the_problem(bad: str) -> None:
    with pytest.raises(PathError):
        compile_path(bad)


# --- bins and histograms ----------------------------------------------------------------------


def test_numeric_bins_are_reference_deciles_with_under_and_overflow() -> None:
    ref = np.random.default_rng(1).normal(size=10_000)
    bins = FrozenBins.numeric(ref)
    assert bins.edges == tuple(np.quantile(ref, np.linspace(0, 1, 11)))
    assert bins.size == 12
    h = hist(bins, ref)
    assert h.counts[0] == 0  # nothing below the reference minimum
    assert h.counts[-1] == 1  # the maximum opens the overflow bin [e_m, inf)
    assert np.all(np.abs(h.counts[1:-1] - 1000) <= 1)
    h2 = hist(bins, np.array([ref.min() - 1, ref.max() + 1]))
    assert h2.counts[0] == 1 and h2.counts[-1] == 1


def test_discrete_reference_deduplicates_edges() -> None:
    bins = FrozenBins.numeric([0, 0, 0, 0, 0, 0, 1, 1, 2, 3])
    assert bins.edges == tuple(sorted(set(bins.edges)))
    assert list(bins.edges) == sorted(bins.edges)
    const = FrozenBins.numeric([5.0] * 10)
    assert const.edges == (5.0,) and const.size == 2


@given(st.lists(finite, min_size=1, max_size=50), st.lists(finite, max_size=50))
def test_bin_assignment_matches_definition(ref: list[float], values: list[float]) -> None:
    bins = FrozenBins.numeric(ref, n_bins=4)
    e = bins.edges
    expected = np.zeros(bins.size, dtype=np.int64)
    for v in values:
        expected[sum(1 for edge in e if edge <= v)] += 1
    assert hist(bins, values).counts.tolist() == expected.tolist()


def test_values_that_are_not_numbers_count_as_missing() -> None:
    bins = FrozenBins.numeric(range(10))
    h = hist(bins, [1, "2.5", None, "n/a", float("nan"), {"a": 1}])
    assert h.n == 2 and h.missing == 4


def test_categorical_top_k_and_other() -> None:
    ref = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"]
    bins = FrozenBins.categorical(ref, top_k=2)
    assert bins.categories == ("a", "b")  # the tie b/c is broken by text
    h = hist(bins, ["a", "c", "z", "b", None, 1])
    assert h.counts.tolist() == [1, 1, 3] and h.missing == 1


@settings(max_examples=60)
@given(
    st.lists(finite, min_size=1, max_size=200),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
    st.booleans(),
)
def test_merge_of_any_partition_equals_one_histogram(
    values: list[float], cuts: list[int], categorical: bool
) -> None:
    data: list[object] = [str(round(v) % 7) for v in values] if categorical else list(values)
    bins = FrozenBins.categorical(data, 4) if categorical else FrozenBins.numeric(data, 5)
    whole = hist(bins, data)
    points = sorted({min(c, len(data)) for c in cuts})
    parts = np.split(np.arange(len(data)), points)
    merged = Histogram(bins)
    for idx in parts:
        merged = merged.merge(hist(bins, [data[i] for i in idx]))
    assert merged.counts.tolist() == whole.counts.tolist()
    assert merged.missing == whole.missing


def test_merge_refuses_different_bins() -> None:
    a = Histogram(FrozenBins.numeric(range(10)))
    b = Histogram(FrozenBins.numeric(range(11)))
    with pytest.raises(ValueError, match="different bins"):
        a.merge(b)


def test_json_round_trip() -> None:
    rng = np.random.default_rng(2)
    for bins in (FrozenBins.numeric(rng.lognormal(size=500)), FrozenBins.categorical("abcab")):
        h = hist(bins, rng.lognormal(size=50) if bins.kind == "numeric" else list("abzz"))
        back = Histogram.from_dict(orjson.loads(orjson.dumps(h.to_dict())))
        assert back.bins == h.bins
        assert back.counts.tolist() == h.counts.tolist() and back.missing == h.missing


# --- distances against scipy ------------------------------------------------------------------


def _pair(seed: int, shift: float, n_ref: int = 5000, n_cur: int = 800) -> tuple[Histogram, ...]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=n_ref)
    bins = FrozenBins.numeric(ref, n_bins=10)
    return hist(bins, ref), hist(bins, rng.normal(shift, 1.3, size=n_cur))


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0, 8.0])
def test_psi_is_symmetric_kl_on_smoothed_bins(shift: float) -> None:
    ref, cur = _pair(3, shift)
    p = np.where(ref.counts == 0, 1e-4, ref.counts / ref.n)
    q = np.where(cur.counts == 0, 1e-4, cur.counts / cur.n)
    p, q = p / p.sum(), q / q.sum()
    assert psi(ref, cur) == pytest.approx(entropy(p, q) + entropy(q, p), rel=1e-12)
    assert psi(ref, cur) == pytest.approx(psi(cur, ref), rel=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0, 8.0])
def test_js_distance_matches_scipy(shift: float) -> None:
    ref, cur = _pair(4, shift)
    expected = jensenshannon(ref.counts, cur.counts, base=2)
    assert js_distance(ref, cur) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_js_distance_on_categorical() -> None:
    bins = FrozenBins.categorical(list("aaabbc"))
    ref, cur = hist(bins, list("aaabbc")), hist(bins, list("cccz"))
    assert js_distance(ref, cur) == pytest.approx(jensenshannon(ref.counts, cur.counts, base=2))


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0, 8.0])
def test_wasserstein_matches_scipy_on_binned_representation(shift: float) -> None:
    ref, cur = _pair(5, shift)
    r = ref.bins.representatives()
    expected = wasserstein_distance(r, r, u_weights=ref.counts, v_weights=cur.counts)
    assert wasserstein_binned(ref, cur) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    normed = wasserstein_binned_normed(ref, cur)
    assert normed == pytest.approx(expected / ref.bins.std, rel=1e-9, abs=1e-12)


def _at_representatives(seed: int) -> tuple[np.ndarray, np.ndarray, FrozenBins]:
    rng = np.random.default_rng(seed)
    bins = FrozenBins.numeric(rng.exponential(size=3000), n_bins=10)
    r = bins.representatives()
    # the underflow bin's point e_0 falls in bin 1, so draw from bins 1..m only
    ref = r[rng.integers(1, r.size, size=2000)]
    cur = r[rng.choice(np.arange(1, r.size), size=700, p=rng.dirichlet(np.ones(r.size - 1)))]
    return ref, cur, bins


@pytest.mark.parametrize("seed", range(5))
def test_ks_and_wasserstein_equal_sample_values_when_data_sit_at_representatives(
    seed: int,
) -> None:
    ref, cur, bins = _at_representatives(seed)
    h_ref, h_cur = hist(bins, ref), hist(bins, cur)
    assert ks_binned(h_ref, h_cur) == pytest.approx(
        ks_2samp(ref, cur, method="asymp").statistic, abs=1e-12
    )
    assert wasserstein_binned(h_ref, h_cur) == pytest.approx(
        wasserstein_distance(ref, cur), rel=1e-9
    )


@settings(max_examples=50)
@given(
    st.lists(finite, min_size=2, max_size=80),
    st.lists(finite, min_size=1, max_size=80),
)
def test_ks_binned_is_a_lower_bound_of_sample_ks(ref: list[float], cur: list[float]) -> None:
    bins = FrozenBins.numeric(ref, n_bins=5)
    binned = ks_binned(hist(bins, ref), hist(bins, cur))
    assert binned <= ks_2samp(ref, cur, method="asymp").statistic + 1e-12


def test_cdf_distances_refuse_categorical() -> None:
    bins = FrozenBins.categorical("ab")
    with pytest.raises(ValueError):
        ks_binned(hist(bins, "ab"), hist(bins, "aa"))


def test_drift_state_thresholds() -> None:
    assert [drift_state(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501)] == [
        "stable",
        "stable",
        "minor",
        "minor",
        "major",
    ]
    assert drift_state(0.2, warn=0.05, alert=0.15) == "major"


def test_summary_is_insufficient_on_small_windows() -> None:
    ref, cur = _pair(6, 0.0, n_cur=50)
    assert drift_summary(ref, cur, min_count=100)["state"] == "insufficient"
    full = drift_summary(ref, cur, min_count=10)
    assert {"psi", "js", "wasserstein", "wasserstein_normed", "ks"} <= full.keys()
    assert full["state"] == drift_state(full["psi"]) and full["n"] == 50


# --- simulated streams ------------------------------------------------------------------------

WINDOW = 1000


def _psi_stream(rng: np.random.Generator, means: np.ndarray) -> list[float]:
    bins = FrozenBins.numeric(rng.normal(size=10_000))
    ref = hist(bins, rng.normal(size=10_000))
    return [psi(ref, hist(bins, rng.normal(m, 1.0, size=WINDOW))) for m in means]


def test_shift_is_detected_after_it_happens_and_not_before() -> None:
    """Reference N(0,1); 30 windows of 1000 from N(0,1), then 30 from N(1,1)."""
    rng = np.random.default_rng(7)
    means = np.r_[np.zeros(30), np.ones(30)]
    states = [drift_state(v) for v in _psi_stream(rng, means)]
    assert states[:30] == ["stable"] * 30
    assert states[30:] == ["major"] * 30


def test_false_alarm_rate_on_a_stable_stream() -> None:
    """Stable stream, windows of 1000 values against a 10,000-value reference, 10 decile bins.

    Measured over 2000 windows (seed 11): PSI > 0.25 (major) on 0 windows and PSI ≥ 0.1
    (minor) on 0 windows; the largest PSI seen was 0.032 (mean 0.011, as the
    χ²₉·(1/1000 + 1/10000) approximation predicts). So major fires on < 0.05% of windows.
    """
    rng = np.random.default_rng(11)
    values = np.array(_psi_stream(rng, np.zeros(2000)))
    assert np.mean(values > 0.25) < 0.0005
    assert np.mean(values >= 0.1) < 0.0005
    assert 0.005 < values.mean() < 0.02


# --- reference files and the accumulator ------------------------------------------------------


def test_reference_from_rows_and_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    rows = [
        {"amount": float(a), "country": c}
        for a, c in zip(
            rng.lognormal(3, 1, size=500), rng.choice(["DE", "FR", "US"], 500), strict=True
        )
    ]
    direct = reference_from_rows(rows, ["$.amount"], categorical=["country"])
    assert direct["$.amount"] == FrozenBins.numeric([r["amount"] for r in rows])
    assert set(direct["country"].categories) == {"DE", "FR", "US"}

    jsonl = tmp_path / "ref.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    csv_path = tmp_path / "ref.csv"
    csv_path.write_text(
        "amount,country\n" + "".join(f"{r['amount']!r},{r['country']}\n" for r in rows)
    )
    for path in (jsonl, csv_path):
        assert load_reference(path, ["$.amount"], ["country"]) == direct


def test_reference_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_reference(bad, ["a"])
    with pytest.raises(ValueError, match="unsupported"):
        load_reference(tmp_path / "ref.xlsx", ["a"])
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"b": 1}\n')
    with pytest.raises(ValueError, match="'a'"):
        load_reference(empty, ["a"])


def test_parquet_without_pyarrow_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyarrow comes with the test extra (mlflow needs it): hide it as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match="pyarrow"):
        load_reference(tmp_path / "ref.parquet", ["a"])


def test_accumulator_pulls_fields_from_bodies_and_merges() -> None:
    rng = np.random.default_rng(9)
    amounts = rng.normal(size=300)
    bins = {
        "$.instances[*].amount": FrozenBins.numeric(amounts),
        "$.instances[*].country": FrozenBins.categorical(["DE", "FR"]),
    }
    bodies = [
        {"instances": [{"amount": float(a), "country": "DE" if a > 0 else "XX"}]} for a in amounts
    ]
    one, parts = DriftAccumulator(bins, batch=7), [DriftAccumulator(bins), DriftAccumulator(bins)]
    for i, body in enumerate(bodies):
        one.observe(body)
        parts[i % 2].observe(body)
    merged = parts[0].merge(parts[1])
    for field, h in one.histograms().items():
        assert h.counts.tolist() == merged.histograms()[field].counts.tolist()
    assert one.histograms()["$.instances[*].amount"].counts.tolist() == (
        hist(bins["$.instances[*].amount"], amounts).counts.tolist()
    )
    back = DriftAccumulator.from_dict(orjson.loads(orjson.dumps(one.to_dict())))
    assert back.to_dict() == one.to_dict()
