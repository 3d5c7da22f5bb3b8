"""Request traffic and token lengths (spec/serving.py, engine/traffic.py).

Statistical checks use fixed seeds and state their tolerance: tests of a hypothesis reject at
0.1% (p < 0.001), estimates are held within 5 standard errors. The expected values are
written out here from the formulas, not taken from the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from scipy import stats
from shared_paths import SHARED

from aifactory_sim.engine import traffic as tr
from aifactory_sim.errors import ScenarioError
from aifactory_sim.spec.serving import (
    BurstyTraffic,
    DiurnalTraffic,
    GeometricTokens,
    LognormalTokens,
    TokenLengths,
    TraceTraffic,
    Traffic,
    Workload,
)
from aifactory_sim.spec.traces import read_trace

TRAFFIC = TypeAdapter(Traffic)
TOKENS = TypeAdapter(TokenLengths)
ALPHA = 1e-3


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def poisson_two_sided_p(observed: int, mean: float) -> float:
    return min(
        1.0, 2.0 * min(stats.poisson.cdf(observed, mean), stats.poisson.sf(observed - 1, mean))
    )


# --- Poisson --------------------------------------------------------------------------------


def test_poisson_count_and_exponential_gaps():
    spec = TRAFFIC.validate_python({"kind": "poisson", "rate_rps": 50})
    horizon = 2000.0
    times = tr.arrivals(spec, horizon, rng(1))
    assert times.dtype == np.float64
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < horizon
    assert poisson_two_sided_p(times.size, 50 * horizon) > ALPHA
    gaps = np.diff(np.concatenate(([0.0], times)))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 50)).pvalue > ALPHA
    # Index of dispersion of counts in 1 s windows: 1 for a Poisson process.
    counts = np.bincount(times.astype(int), minlength=int(horizon))
    assert counts.var(ddof=1) / counts.mean() == pytest.approx(1.0, abs=0.1)


def test_poisson_counts_per_tick():
    spec = TRAFFIC.validate_python({"kind": "poisson", "rate_rps": 3})
    counts = tr.counts_per_tick(spec, 10.0, 10_005.0, rng(2))
    assert counts.dtype == np.int64 and counts.size == 1001  # the last tick is 5 s long
    expected = np.full(1001, 30.0)
    expected[-1] = 15.0
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, counts.size) > ALPHA


# --- diurnal --------------------------------------------------------------------------------

DAY = 86400.0


def diurnal_integral(mean: float, r: float, period: float, phase: float, t0, t1):
    """integral of mean (1 + a cos(2 pi (t - phase) / period)) dt over [t0, t1], a = (r-1)/(r+1)."""
    a, w = (r - 1) / (r + 1), 2 * np.pi / period
    return mean * ((t1 - t0) + a / w * (np.sin(w * (t1 - phase)) - np.sin(w * (t0 - phase))))


def test_diurnal_intensity_shape():
    spec = TRAFFIC.validate_python(
        {"kind": "diurnal", "mean_rps": 600, "peak_to_trough": 3, "period": "1d", "phase": "14h"}
    )
    assert isinstance(spec, DiurnalTraffic) and spec.period == DAY and spec.phase == 14 * 3600
    peak, trough = tr.mean_rate(spec, 14 * 3600.0), tr.mean_rate(spec, 2 * 3600.0)
    assert peak / trough == pytest.approx(3.0, rel=1e-12)
    grid = np.arange(0, DAY, 60.0)
    rates = tr.mean_rate(spec, grid)
    assert grid[np.argmax(rates)] == 14 * 3600 and grid[np.argmin(rates)] == 2 * 3600
    assert rates.max() == pytest.approx(peak) and rates.min() == pytest.approx(trough)
    assert rates.mean() == pytest.approx(600.0, rel=1e-12)
    edges = np.array([0.0, 3.3e3, 5e4, 2.5 * DAY])
    assert tr.expected_arrivals(spec, edges) == pytest.approx(
        diurnal_integral(600, 3, DAY, 14 * 3600, 0.0, edges), rel=1e-12
    )
    flat = TRAFFIC.validate_python({"kind": "diurnal", "mean_rps": 2, "peak_to_trough": 1})
    assert tr.mean_rate(flat, grid) == pytest.approx(2.0)


def test_diurnal_counts_per_hour_of_day_follow_the_integrated_intensity():
    mean, r, phase, days = 5.0, 3.0, 14 * 3600.0, 7
    spec = TRAFFIC.validate_python(
        {"kind": "diurnal", "mean_rps": mean, "peak_to_trough": r, "phase": phase}
    )
    times = tr.arrivals(spec, days * DAY, rng(3))
    assert np.all(np.diff(times) >= 0) and times[-1] < days * DAY
    hours = np.arange(25) * 3600.0
    expected = days * diurnal_integral(mean, r, DAY, phase, hours[:-1], hours[1:])
    observed = np.bincount(((times % DAY) // 3600).astype(int), minlength=24)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, 24) > ALPHA
    # The peak hour straddles 14:00 and the trough 02:00: two equal bins each side.
    ranked = np.argsort(observed)
    assert set(ranked[-2:]) == {13, 14} and set(ranked[:2]) == {1, 2}

    ticks = tr.counts_per_tick(spec, 3600.0, days * DAY, rng(4))
    edges = np.arange(days * 24 + 1) * 3600.0
    expected = diurnal_integral(mean, r, DAY, phase, edges[:-1], edges[1:])
    chi2 = float(np.sum((ticks - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, ticks.size) > ALPHA


# --- bursty (MMPP) --------------------------------------------------------------------------

MMPP = {"kind": "bursty", "base_rps": 2, "burst_rps": 20, "mean_burst": "1min", "mean_gap": "9min"}


def mmpp_numbers(base, burst, mean_burst, mean_gap):
    """Long-run rate, and the variance rate of counts: Var N(T) / T -> rate + 2 d^2 pb pg / q
    for a two-state MMPP (d the rate difference, pb, pg the state shares, q the sum of the
    switching rates; Fischer & Meier-Hellstern 1993)."""
    rate = (base * mean_gap + burst * mean_burst) / (mean_gap + mean_burst)
    pb = mean_burst / (mean_burst + mean_gap)
    q = 1 / mean_burst + 1 / mean_gap
    return rate, rate + 2 * (burst - base) ** 2 * pb * (1 - pb) / q, q


def test_mmpp_long_run_rate_and_overdispersion():
    spec = TRAFFIC.validate_python(MMPP)
    assert isinstance(spec, BurstyTraffic) and spec.mean_burst == 60 and spec.mean_gap == 540
    rate, var_rate, q = mmpp_numbers(2, 20, 60, 540)
    assert rate == pytest.approx(3.8) and spec.long_run_rps == pytest.approx(rate)
    horizon = 1e6
    times = tr.arrivals(spec, horizon, rng(5))
    assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < horizon
    assert abs(times.size - rate * horizon) < 5 * math.sqrt(var_rate * horizon)
    ticks = tr.counts_per_tick(spec, 60.0, horizon, rng(6))
    assert abs(ticks.sum() - rate * horizon) < 5 * math.sqrt(var_rate * horizon)
    # Index of dispersion of counts in 60 s windows: 1 + (var_rate / rate - 1) (1 - (1 -
    # exp(-qT)) / (qT)) for an MMPP, against 1 for Poisson.
    window = 60.0
    theory = 1 + (var_rate / rate - 1) * (1 - (1 - math.exp(-q * window)) / (q * window))
    for counts in (np.bincount((times // window).astype(int)), ticks):
        idc = counts.var(ddof=1) / counts.mean()
        assert idc > 100 and idc == pytest.approx(theory, rel=0.1)


def test_mmpp_transient_mean_from_a_given_state():
    """Started in a burst, the expected count relaxes to the long-run rate: E N(T) = rate T +
    (burst - rate) (1 - exp(-qT)) / q. 2000 replications, held within 5 standard errors."""
    horizon = 120.0
    spec = TRAFFIC.validate_python({**MMPP, "initial_state": "burst"})
    rate, _, q = mmpp_numbers(2, 20, 60, 540)
    expected = rate * horizon + (20 - rate) * (1 - math.exp(-q * horizon)) / q
    assert tr.expected_arrivals(spec, horizon) == pytest.approx(expected, rel=1e-12)
    gen = rng(7)
    counts = np.array([tr.arrivals(spec, horizon, gen).size for _ in range(2000)])
    assert abs(counts.mean() - expected) < 5 * counts.std(ddof=1) / math.sqrt(counts.size)
    base = TRAFFIC.validate_python({**MMPP, "initial_state": "base"})
    assert tr.mean_rate(base, 0.0) == pytest.approx(2.0)
    assert tr.mean_rate(spec, 0.0) == pytest.approx(20.0)
    assert tr.mean_rate(spec, 1e6) == pytest.approx(rate)


def test_interrupted_poisson_has_no_arrivals_outside_bursts():
    spec = TRAFFIC.validate_python({**MMPP, "base_rps": 0, "burst_rps": 50})
    times = tr.arrivals(spec, 3600.0, rng(8))
    rate, var_rate, _ = mmpp_numbers(0, 50, 60, 540)
    assert abs(times.size - rate * 3600) < 5 * math.sqrt(var_rate * 3600)
    # Gaps between bursts (mean 9 min) show up as long silences.
    assert np.diff(times).max() > 60


# --- offline --------------------------------------------------------------------------------


def test_offline_all_at_zero():
    spec = TRAFFIC.validate_python({"kind": "offline", "requests": "10k"})
    times = tr.arrivals(spec, 1.0, rng())
    assert times.size == 10_000 and not times.any()
    counts = tr.counts_per_tick(spec, 1.0, 5.0, rng())
    assert counts.tolist() == [10_000, 0, 0, 0, 0]
    assert tr.expected_arrivals(spec, 1e-9) == 10_000 and tr.expected_arrivals(spec, 0.0) == 0


# --- token lengths --------------------------------------------------------------------------

N = 200_000


def test_geometric_mean_and_cap():
    p = 1 / 300
    free = tr.lengths(TOKENS.validate_python({"kind": "geometric", "mean": 300}), N, rng(9))
    assert free.dtype == np.int64 and free.min() >= 1
    assert abs(free.mean() - 300) < 5 * math.sqrt(1 - p) / p / math.sqrt(N)
    spec = TOKENS.validate_python({"kind": "geometric", "mean": 300, "max": 400})
    capped = tr.lengths(spec, N, rng(10))
    assert capped.max() == 400 and capped.min() >= 1
    mean = (1 - (1 - p) ** 400) / p  # E[min(G, M)] = sum_{k<M} (1-p)^k
    assert tr.mean_length(spec) == pytest.approx(mean, rel=1e-12)
    assert abs(capped.mean() - mean) < 5 * capped.std() / math.sqrt(N)
    at_cap = (1 - p) ** 399  # P(G >= M)
    assert abs((capped == 400).sum() - N * at_cap) < 5 * math.sqrt(N * at_cap * (1 - at_cap))
    ones = tr.lengths(GeometricTokens(mean=1), 100, rng())
    assert (ones == 1).all()


def test_lognormal_median_and_clipping():
    median, sigma, cap = 1000.0, 0.8, 8192
    spec = TOKENS.validate_python(
        {"kind": "lognormal", "median": median, "sigma": sigma, "max": cap}
    )
    x = tr.lengths(spec, N, rng(11))
    assert x.dtype == np.int64 and x.max() == cap and x.min() >= 1
    # Sample median: standard error 1 / (2 f(m) sqrt(N)), f(m) = 1 / (m sigma sqrt(2 pi)).
    se = median * sigma * math.sqrt(2 * math.pi) / (2 * math.sqrt(N))
    assert abs(np.median(x) - median) < 5 * se + 0.5
    p_cap = stats.norm.sf((math.log(cap - 0.5) - math.log(median)) / sigma)
    assert abs((x == cap).sum() - N * p_cap) < 5 * math.sqrt(N * p_cap * (1 - p_cap))
    assert abs(x.mean() - tr.mean_length(spec)) < 5 * x.std() / math.sqrt(N)
    # Unclipped, the mean is the lognormal's median exp(sigma^2 / 2), up to rounding.
    free = LognormalTokens(median=median, sigma=sigma)
    assert tr.mean_length(free) == pytest.approx(median * math.exp(sigma**2 / 2), rel=1e-6)
    tiny = tr.lengths(LognormalTokens(median=1, sigma=2), N, rng(12))
    assert tiny.min() == 1 and (tiny == 1).mean() == pytest.approx(
        stats.norm.cdf(math.log(1.5) / 2), abs=5 * math.sqrt(0.25 / N)
    )


def test_fixed_uniform_empirical():
    assert tr.lengths(TOKENS.validate_python(512), 3, rng()).tolist() == [512] * 3
    fixed = TOKENS.validate_python({"kind": "fixed", "value": 900, "max": 512})
    assert tr.lengths(fixed, 2, rng()).tolist() == [512, 512]
    assert tr.mean_length(fixed) == 512
    uni = TOKENS.validate_python({"kind": "uniform", "low": 3, "high": 9})
    x = tr.lengths(uni, N, rng(13))
    assert set(np.unique(x)) == set(range(3, 10))
    assert abs(x.mean() - 6) < 5 * math.sqrt((7**2 - 1) / 12 / N)
    emp = TOKENS.validate_python(
        {"kind": "empirical", "values": [10, 20, 30], "weights": [1, 2, 7]}
    )
    x = tr.lengths(emp, N, rng(14))
    observed = np.array([(x == v).sum() for v in (10, 20, 30)])
    expected = N * np.array([0.1, 0.2, 0.7])
    assert stats.chi2.sf(float(np.sum((observed - expected) ** 2 / expected)), 2) > ALPHA
    assert tr.mean_length(emp) == pytest.approx(26.0)
    even = tr.lengths(TOKENS.validate_python({"kind": "empirical", "values": [5, 6]}), N, rng(15))
    assert abs((even == 5).sum() - N / 2) < 5 * math.sqrt(N / 4)
    assert tr.lengths(emp, 0, rng()).dtype == np.int64


DISTS = st.one_of(
    st.builds(dict, kind=st.just("fixed"), value=st.integers(1, 10**5)),
    st.builds(dict, kind=st.just("uniform"), low=st.integers(1, 50), high=st.integers(50, 5000)),
    st.builds(
        dict, kind=st.just("lognormal"), median=st.floats(0.1, 1e5), sigma=st.floats(0.01, 4.0)
    ),
    st.builds(dict, kind=st.just("geometric"), mean=st.floats(1.0, 1e5)),
    st.builds(dict, kind=st.just("empirical"), values=st.lists(st.integers(1, 10**6), min_size=1)),
)


@settings(max_examples=60, deadline=None)
@given(dist=DISTS, cap=st.none() | st.integers(1, 10**4), seed=st.integers(0, 2**32))
def test_lengths_are_whole_tokens_within_bounds(dist, cap, seed):
    spec = TOKENS.validate_python({**dist, "max": cap})
    x = tr.lengths(spec, 500, rng(seed))
    assert x.dtype == np.int64 and x.shape == (500,) and x.min() >= 1
    if cap is not None:
        assert x.max() <= cap
        assert 1 <= tr.mean_length(spec) <= cap


# --- traces ---------------------------------------------------------------------------------


def test_azure_trace_with_datetimes(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,4808,10\n"
        "2023-11-16 18:15:47.1805900,3180,8\n"
        "2023-11-16 18:15:46.9305900,110,27\n"  # out of order: sorted on reading
        "2023-11-16 18:16:47.6805901,7,0\n"  # 0 generated tokens: counted as 1
    )
    spec = TRAFFIC.validate_python({"kind": "trace", "path": str(path)})
    req = read_trace(spec)
    assert req.arrival_s.tolist() == [0.0, 0.25, 0.5, 61.0000001]
    assert req.prompt_tokens.tolist() == [4808, 110, 3180, 7]
    assert req.output_tokens.tolist() == [10, 27, 8, 1]
    assert tr.arrivals(spec, 61.0, rng()).tolist() == [0.0, 0.25, 0.5]
    drawn = tr.draw_requests(
        spec, None, None, 100.0, arrivals_rng=rng(), prompt_rng=rng(), output_rng=rng()
    )
    assert len(drawn) == 4 and drawn.prompt_tokens.dtype == np.int64
    assert drawn.output_tokens.tolist() == [10, 27, 8, 1]
    # Keeping the time of day: seconds from midnight (UTC) of the first request's day.
    kept = read_trace(spec.model_copy(update={"shift_to_zero": False}))
    assert kept.arrival_s[0] == 18 * 3600 + 15 * 60 + 46.68059
    # The 2024 traces write a UTC offset.
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,100,5\n"
        "2024-05-10 00:00:02.509930+00:00,200,6\n"
    )
    # A trace is read once, when its spec is loaded: the rewritten file is a new spec's.
    assert tr.arrivals(spec, 10.0, rng()).tolist() == [0.0, 0.25, 0.5]
    spec = TRAFFIC.validate_python({"kind": "trace", "path": str(path)})
    assert tr.arrivals(spec, 10.0, rng()).tolist() == [0.0, 2.5]


def test_plain_trace_speedup_loop_and_ticks(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n10.5,100,1\n11.75,200,2\n12.5,300,3\n")
    spec = TraceTraffic(path=str(path))
    req = read_trace(spec)
    assert req.arrival_s.tolist() == [0.0, 1.25, 2.0]
    assert req.prompt_tokens.tolist() == [100, 200, 300]
    as_written = read_trace(spec.model_copy(update={"shift_to_zero": False}))
    assert as_written.arrival_s.tolist() == [10.5, 11.75, 12.5]
    fast = spec.model_copy(update={"speedup": 2.0})
    assert tr.arrivals(fast, 10.0, rng()).tolist() == [0.0, 0.625, 1.0]
    # One repetition lasts to the last arrival plus the mean gap (1 s here): a period of 3 s.
    looped = spec.model_copy(update={"loop": True})
    req = tr.draw_requests(
        looped, None, None, 7.0, arrivals_rng=rng(), prompt_rng=rng(), output_rng=rng()
    )
    assert req.arrival_s.tolist() == [0.0, 1.25, 2.0, 3.0, 4.25, 5.0, 6.0]
    assert req.output_tokens.tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert tr.counts_per_tick(looped, 2.0, 7.0, rng()).tolist() == [2, 2, 2, 1]
    assert tr.counts_per_tick(spec, 1.0, 3.0, rng()).tolist() == [1, 1, 1]


def test_trace_without_token_columns_takes_distributions(tmp_path):
    path = tmp_path / "times.csv"
    path.write_text("arrival_s\n0\n1\n2\n")
    spec = TraceTraffic(path=str(path))
    req = tr.draw_requests(
        spec,
        TOKENS.validate_python(64),
        GeometricTokens(mean=10, max=20),
        10.0,
        arrivals_rng=rng(),
        prompt_rng=rng(1),
        output_rng=rng(2),
    )
    assert req.prompt_tokens.tolist() == [64, 64, 64] and req.output_tokens.max() <= 20
    with pytest.raises(ScenarioError, match="output_tokens"):
        tr.draw_requests(
            spec, TOKENS.validate_python(64), None, 10.0,
            arrivals_rng=rng(), prompt_rng=rng(), output_rng=rng(),
        )  # fmt: skip


def test_bad_trace_files(tmp_path):
    with pytest.raises(ScenarioError, match="no such trace file"):
        tr.arrivals(TraceTraffic(path=str(tmp_path / "missing.csv")), 1.0, rng())
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,in,out\n0,1,1\n")
    with pytest.raises(ScenarioError, match=r"TIMESTAMP.*arrival_s"):
        tr.arrivals(TraceTraffic(path=str(wrong)), 1.0, rng())
    frac = tmp_path / "frac.csv"
    frac.write_text("arrival_s,prompt_tokens,output_tokens\n0,1.5,1\n")
    with pytest.raises(ScenarioError, match="prompt_tokens"):
        read_trace(TraceTraffic(path=str(frac)))
    single = tmp_path / "single.csv"
    single.write_text("arrival_s\n0\n")
    with pytest.raises(ScenarioError, match="loop"):
        tr.arrivals(TraceTraffic(path=str(single), loop=True), 10.0, rng())
    with pytest.raises(ValueError, match="intensity"):
        tr.mean_rate(TraceTraffic(path=str(single)), 0.0)


# --- determinism ----------------------------------------------------------------------------

KINDS = [
    {"kind": "poisson", "rate_rps": 20},
    {"kind": "diurnal", "mean_rps": 20, "peak_to_trough": 4, "period": "1h"},
    MMPP,
]


@pytest.mark.parametrize("spec", KINDS, ids=lambda s: s["kind"])
def test_same_seed_same_arrays(spec):
    spec = TRAFFIC.validate_python(spec)
    a, b = tr.arrivals(spec, 7200.0, rng(42)), tr.arrivals(spec, 7200.0, rng(42))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, tr.arrivals(spec, 7200.0, rng(43)))
    np.testing.assert_array_equal(
        tr.counts_per_tick(spec, 60.0, 7200.0, rng(42)),
        tr.counts_per_tick(spec, 60.0, 7200.0, rng(42)),
    )
    dist = TOKENS.validate_python({"kind": "lognormal", "median": 500, "sigma": 1.0})
    np.testing.assert_array_equal(tr.lengths(dist, 1000, rng(42)), tr.lengths(dist, 1000, rng(42)))


def test_streams_are_independent():
    """Changing the prompt distribution changes neither arrivals nor output lengths."""
    traffic = TRAFFIC.validate_python({"kind": "poisson", "rate_rps": 20})
    out = GeometricTokens(mean=100)

    def draw(prompt):
        return tr.draw_requests(
            traffic, prompt, out, 600.0, arrivals_rng=rng(1), prompt_rng=rng(2), output_rng=rng(3)
        )

    a = draw(TOKENS.validate_python({"kind": "empirical", "values": [1, 2, 3]}))
    b = draw(LognormalTokens(median=100, sigma=1))
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(a.prompt_tokens, b.prompt_tokens)


# --- specs ----------------------------------------------------------------------------------


def test_example_factory_workload_parses():
    service = yaml.safe_load((SHARED / "examples" / "factory.yaml").read_text())["inference"][0]
    work = Workload(**{k: service[k] for k in ("traffic", "prompt_tokens", "output_tokens")})
    assert isinstance(work.traffic, DiurnalTraffic) and work.traffic.period == DAY
    assert isinstance(work.prompt_tokens, LognormalTokens) and work.prompt_tokens.max == 8192
    assert isinstance(work.output_tokens, GeometricTokens) and work.output_tokens.mean == 300
    assert Workload(traffic={"kind": "trace", "path": "x.csv"}).prompt_tokens is None


def _error(adapter, value) -> tuple[list[str], str]:
    with pytest.raises(ValidationError) as info:
        adapter.validate_python(value)
    locs = [".".join(str(p) for p in err["loc"]) for err in info.value.errors()]
    return locs, str(info.value)


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"kind": "poisson", "rate_rps": 0}, "poisson.rate_rps", "greater than 0"),
        ({"kind": "poisson", "rate_rps": float("inf")}, "poisson.rate_rps", "finite"),
        ({"kind": "poisson", "rate": 5}, "poisson.rate", "Extra inputs"),
        ({"kind": "diurnal", "mean_rps": 5, "peak_to_trough": 0.5}, "diurnal.peak_to_trough", "1"),
        ({"kind": "diurnal", "mean_rps": 5, "peak_to_trough": 2, "period": "1fortnight"},
         "diurnal.period", "ms, s, min, h, d, w"),
        ({**MMPP, "base_rps": 30}, "bursty", "burst_rps=20.0 must be at least base_rps=30.0"),
        ({**MMPP, "mean_burst": 0}, "bursty.mean_burst", "greater than 0"),
        ({**MMPP, "initial_state": "on"}, "bursty.initial_state", "'stationary', 'base'"),
        ({"kind": "offline", "requests": 1.5}, "offline.requests", "integer"),
        ({"kind": "trace", "path": "x.csv", "layout": "csv"}, "trace.layout", "'azure'"),
        ({"kind": "trace", "path": "x.csv", "speedup": 0}, "trace.speedup", "greater than 0"),
        ({"kind": "weibull", "rate_rps": 1}, "", "'poisson', 'diurnal', 'bursty', 'offline'"),
        ({"rate_rps": 1}, "", "needs a kind; allowed: poisson, diurnal, bursty"),
    ],
)  # fmt: skip
def test_bad_traffic_names_the_field(value, field, words):
    locs, message = _error(TRAFFIC, value)
    assert field in locs and words in message


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"kind": "fixed", "value": 0}, "fixed.value", "greater than or equal to 1"),
        ({"kind": "uniform", "low": 9, "high": 3}, "uniform", "low=9 must not exceed high=3"),
        ({"kind": "lognormal", "median": 100, "sigma": 0}, "lognormal.sigma", "greater than 0"),
        ({"kind": "lognormal", "median": 100, "sigma": 1, "max": 0}, "lognormal.max", "1"),
        ({"kind": "geometric", "mean": 0.5}, "geometric.mean", "greater than or equal to 1"),
        ({"kind": "empirical", "values": []}, "empirical.values", "at least 1"),
        ({"kind": "empirical", "values": [1, 2], "weights": [1]}, "empirical",
         "weights has 1 entries but values has 2"),
        ({"kind": "empirical", "values": [1, 2], "weights": [0, 0]}, "empirical", "positive sum"),
        ({"kind": "normal", "mean": 5}, "", "'fixed', 'uniform', 'lognormal', 'geometric'"),
        (0, "fixed.value", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_lengths_name_the_field(value, field, words):
    locs, message = _error(TOKENS, value)
    assert field in locs and words in message


def test_workload_needs_lengths_unless_traced():
    with pytest.raises(ValidationError, match="poisson traffic needs output_tokens"):
        Workload(traffic={"kind": "poisson", "rate_rps": 1}, prompt_tokens=10)
