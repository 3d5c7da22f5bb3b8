"""The serving figures (latency CDFs, replicas, KV cache) and save_all, on hand-made results."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from aifactory_sim.plots import Plotter, _ecdf

NAN = float("nan")
HOUR = 3600.0


def stats(**kw):
    base = {"mean": None, "p50": None, "p90": None, "p99": None}
    return {**base, **kw}


def service_summary(attainment=None, met=None):
    return {"fidelity": "fast", "requests": 0, "completed": 0, "dropped": 0, "in_flight": 0,
            "output_tokens": 0, "output_tokens_per_s": 0.0, "ttft_s": stats(),
            "tpot_s": stats(), "e2e_s": stats(), "queue_wait_s": stats(), "preemptions": 0,
            "slo_attainment": attainment, "slo_met": met or {}, "replicas_mean": 1.0,
            "replicas_max": 2, "kv_capacity_tokens": 1e5,
            "gpu_h": {"held": 1.0, "busy": 0.5, "cold_start": 0.1}}


def requests_of(service, n, *, ttft_s=0.2, tpot_s=0.02, out=11, complete=True, seed=0):
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, HOUR, n))
    ttft = ttft_s * rng.uniform(0.5, 2.0, n)
    first = arrival + ttft if complete else np.full(n, NAN)
    finish = first + tpot_s * (out - 1) if complete else np.full(n, NAN)
    return pd.DataFrame({
        "service": service, "request": np.arange(n), "arrival_s": arrival,
        "admitted_s": arrival + 0.01, "first_token_s": first, "finish_s": finish,
        "prompt_tokens": 100, "output_tokens": out, "queue_wait_s": 0.01, "preemptions": 0,
        "replica": 0, "dropped": False,
    })


def ticks_of(service, times, *, kv=0.4, ready=2, desired=3):
    n = len(times)
    return pd.DataFrame({
        "service": service, "time_s": np.asarray(times, dtype=float),
        "arrivals_rps": np.linspace(0, 5, n), "pending": 0, "starting": 1, "ready": ready,
        "draining": 0, "desired": desired, "in_flight": 4, "queued": 1, "kv_used": kv,
    })


def fake(services=(), requests=None, ticks=None, *, duration_s=2 * HOUR, serving_gpus=0):
    """What Plotter reads of a Results: summary, the tables and the scenario's services."""
    specs = [SimpleNamespace(name=name, slo=slo, autoscaler=auto) for name, slo, auto, _ in
             services]
    summary = {"scenario": "fake", "duration_s": duration_s, "gpus": 64,
               "ledger_gpu_h": {"training": 10.0, "inference_busy": 5.0, "unallocated": 113.0},
               "training": {}, "inference": {name: summ for name, _, _, summ in services}}
    cols = ["service", "request", "arrival_s", "admitted_s", "first_token_s", "finish_s",
            "prompt_tokens", "output_tokens", "queue_wait_s", "preemptions", "replica",
            "dropped"]
    tick_cols = ["service", "time_s", "arrivals_rps", "pending", "starting", "ready",
                 "draining", "desired", "in_flight", "queued", "kv_used"]
    return SimpleNamespace(
        summary=summary,
        scenario=SimpleNamespace(inference=specs),
        requests=requests if requests is not None else pd.DataFrame(columns=cols),
        services=ticks if ticks is not None else pd.DataFrame(columns=tick_cols),
        timeseries=pd.DataFrame({"time_s": [0.0, HOUR], "allocated_gpus": [serving_gpus, 0],
                                 "down_gpus": [0, 0], "training_gpus": [0, 0],
                                 "serving_gpus": [serving_gpus, 0], "running_jobs": [0, 0],
                                 "queued_jobs": [0, 0]}),
        events=pd.DataFrame(columns=["job", "time_s", "event"]),
    )


SLO = SimpleNamespace(ttft_s=0.5, tpot_s=0.025, percentile=90.0)
AUTO = SimpleNamespace(min_replicas=1, max_replicas=6)


def two_services():
    services = [("chat", SLO, AUTO, service_summary(0.93, {"ttft": True, "tpot": True})),
                ("batch", None, None, service_summary())]
    req = pd.concat([requests_of("chat", 500), requests_of("batch", 40, ttft_s=5.0, seed=1)],
                    ignore_index=True)
    ticks = pd.concat([ticks_of("chat", np.arange(0, 2 * HOUR, 15.0)),
                       ticks_of("batch", np.arange(0, 2 * HOUR, 30.0), kv=0.8)],
                      ignore_index=True)
    return fake(services, req, ticks, serving_gpus=16)


def lines_by_gid(ax, prefix):
    return {ln.get_gid().split(":", 1)[1]: ln for ln in ax.get_lines()
            if (ln.get_gid() or "").startswith(prefix)}


def test_ecdf_is_monotone_reaches_one_and_thins_large_samples():
    x, f = _ecdf(np.array([3.0, 1.0, NAN, 2.0, 2.0]))
    assert list(x) == [1.0, 1.0, 2.0, 2.0, 3.0] and list(f) == [0, 0.25, 0.5, 0.75, 1.0]
    big = np.random.default_rng(0).exponential(size=100_000)
    x, f = _ecdf(big, max_points=1000)
    assert x.size <= 1001 and f[-1] == 1.0 and x[-1] == big.max()
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(f) > 0)
    # at each kept point, the share of samples at or below it
    k = x.size // 2
    assert f[k] == pytest.approx(np.mean(big <= x[k]), abs=1e-5)
    assert _ecdf(np.array([NAN]))[0].size == 0


def test_latency_draws_one_cdf_per_service_with_the_slo_lines():
    res = two_services()
    fig = Plotter(res).latency()
    assert len(fig.axes) == 3
    ttft_ax, tpot_ax, e2e_ax = fig.axes
    for ax in fig.axes:
        cdfs = lines_by_gid(ax, "cdf:")
        assert set(cdfs) == {"chat", "batch"}
        for line in cdfs.values():
            x, f = line.get_xdata(), line.get_ydata()
            assert f[-1] == 1.0 and f[0] == 0.0
            assert np.all(np.diff(f) >= 0) and np.all(np.diff(x) >= 0)
    chat = res.requests[res.requests["service"] == "chat"]
    ttft_ms = (chat["first_token_s"] - chat["arrival_s"]) * 1e3
    assert lines_by_gid(ttft_ax, "cdf:")["chat"].get_xdata()[-1] == pytest.approx(ttft_ms.max())
    tpot_ms = lines_by_gid(tpot_ax, "cdf:")["chat"].get_xdata()
    assert tpot_ms == pytest.approx(np.full(tpot_ms.size, 20.0))  # (finish - first) / 10
    # the SLO target is a vertical line at its x, the percentile a horizontal one
    assert lines_by_gid(ttft_ax, "slo:")["chat"].get_xdata()[0] == pytest.approx(500.0)
    assert lines_by_gid(tpot_ax, "slo:")["chat"].get_xdata()[0] == pytest.approx(25.0)
    assert lines_by_gid(ttft_ax, "percentile:")["chat"].get_ydata()[0] == pytest.approx(0.9)
    assert not lines_by_gid(e2e_ax, "slo:")  # no E2E objective
    assert "batch" not in lines_by_gid(ttft_ax, "slo:")  # no SLO for it
    labels = ttft_ax.get_legend_handles_labels()[1]
    assert "chat (SLO attainment 93.0%)" in labels
    assert any("target 500 ms at p90 met" in lab for lab in labels)
    assert ttft_ax.get_xscale() == "log"  # 0.1 s to 10 s across services


def test_latency_of_one_service_and_of_an_unknown_one():
    res = two_services()
    fig = Plotter(res).latency("batch")
    assert set(lines_by_gid(fig.axes[0], "cdf:")) == {"batch"}
    with pytest.raises(ValueError, match="allowed: chat, batch"):
        Plotter(res).latency("nope")


def test_a_service_with_no_completed_request_draws_no_cdf():
    services = [("chat", SLO, None, service_summary(0.5)),
                ("stuck", SLO, None, service_summary(0.0))]
    req = pd.concat([requests_of("chat", 50), requests_of("stuck", 30, complete=False)],
                    ignore_index=True)
    fig = Plotter(fake(services, req)).latency()
    for ax in fig.axes:
        assert set(lines_by_gid(ax, "cdf:")) == {"chat"}
        assert "stuck" not in lines_by_gid(ax, "slo:")
    assert any("no completed request: stuck" in t.get_text() for t in fig.texts)
    # nothing completed anywhere: a figure all the same, each panel says so
    fig = Plotter(fake(services[1:], requests_of("stuck", 30, complete=False))).latency()
    assert not any(ax.get_lines() for ax in fig.axes)
    assert all(any("no completed request" in t.get_text() for t in ax.texts)
               for ax in fig.axes)


def test_tpot_skips_single_token_outputs():
    req = pd.concat([requests_of("s", 20, out=1), requests_of("s", 10, out=5, seed=2)],
                    ignore_index=True)
    fig = Plotter(fake([("s", None, None, service_summary())], req)).latency()
    ttft, tpot, e2e = (lines_by_gid(ax, "cdf:")["s"] for ax in fig.axes)
    assert tpot.get_xdata().size == 10 + 1  # the (x_min, 0) start, then 10 samples
    assert ttft.get_xdata().size == e2e.get_xdata().size == 30 + 1


def test_replicas_plot_the_states_bounds_and_arrival_rate():
    res = two_services()
    fig = Plotter(res).replicas()
    main = [ax for ax in fig.axes if ax.get_ylabel() == "replicas"]
    rate = [ax for ax in fig.axes if ax.get_ylabel().startswith("arrivals")]
    assert len(main) == len(rate) == 2
    chat = main[0]
    labels = chat.get_legend_handles_labels()[1]
    assert labels[:3] == ["provisioned (starting + ready + draining)", "ready",
                          "desired (autoscaler)"]
    provisioned = chat.get_lines()[0]
    assert set(provisioned.get_ydata()) == {3.0}  # starting 1 + ready 2 + draining 0
    assert provisioned.get_xdata()[-1] == pytest.approx(2.0)  # held to the end (hours)
    bounds = {ln.get_ydata()[0] for ln in chat.get_lines() if ln.get_linestyle() == "--"}
    assert bounds == {1, 6}
    assert not [ln for ln in main[1].get_lines() if ln.get_linestyle() == "--"]  # no autoscaler
    (stairs,) = rate[0].patches
    ticks = res.services[res.services["service"] == "chat"]
    assert stairs.get_data().values == pytest.approx(ticks["arrivals_rps"].to_numpy()[1:])


def test_serving_plots_survive_a_single_tick_and_nan_columns():
    ticks = ticks_of("s", [0.0], kv=NAN)
    ticks["arrivals_rps"] = NAN
    res = fake([("s", None, AUTO, service_summary())], requests_of("s", 5), ticks)
    fig = Plotter(res).replicas()
    ready = fig.axes[0].get_lines()[1]
    assert list(ready.get_xdata()) == [0.0, 2.0]  # one sample held to the end of the run
    fig = Plotter(res).kv_cache()
    kv_ax, load_ax = fig.axes
    assert kv_ax.get_ylim() == (0, 1.05)
    assert np.isnan(kv_ax.get_lines()[0].get_ydata()).all()
    assert len(load_ax.get_lines()) == 2  # in flight and queued


def test_kv_cache_draws_each_service():
    fig = Plotter(two_services()).kv_cache()
    kv_ax, load_ax = fig.axes
    assert [ln.get_label() for ln in kv_ax.get_lines()] == ["chat", "batch"]
    assert set(kv_ax.get_lines()[1].get_ydata()) == {0.8}
    assert len(load_ax.get_lines()) == 4
    assert "hours" in load_ax.get_xlabel() and kv_ax.get_ylabel().startswith("KV-cache")


def test_allocation_stacks_serving_gpus():
    fig = Plotter(two_services()).allocation()
    ax = fig.axes[0]
    assert "inference services" in ax.get_legend_handles_labels()[1]
    assert "inference services" in ax.get_title()
    fig = Plotter(fake()).allocation()
    assert "inference services" not in fig.axes[0].get_legend_handles_labels()[1]


def test_save_all_writes_the_serving_figures_only_for_services(tmp_path):
    old = {"ledger.png", "allocation.png", "utilisation.png", "timeline.png", "ettr.png"}
    plain = tmp_path / "plain"
    plain.mkdir()
    written = Plotter(fake()).save_all(plain)
    assert {p.name for p in written} == old == {p.name for p in plain.iterdir()}
    served = tmp_path / "served"
    served.mkdir()
    written = Plotter(two_services()).save_all(served)
    new = {"latency.png", "replicas.png", "kv_cache.png"}
    assert {p.name for p in written} == old | new == {p.name for p in served.iterdir()}
    assert all(p.stat().st_size > 0 for p in written)


def test_the_closing_sample_draws_no_arrival_rate():
    # The engine samples once more at the end of the run, with no tick behind its rate.
    ticks = ticks_of("s", np.r_[np.arange(0, 2 * HOUR, 15.0), 2 * HOUR])
    ticks.loc[ticks.index[-1], "arrivals_rps"] = 0.0
    fig = Plotter(fake([("s", None, None, service_summary())], requests_of("s", 5),
                       ticks)).replicas()
    (stairs,) = fig.axes[1].patches
    edges = stairs.get_data().edges
    assert edges[-1] == pytest.approx((2 * HOUR - 15.0) / HOUR)
    assert stairs.get_data().values.min() > 0
    assert fig.axes[1].get_ylim()[1] == pytest.approx(ticks["arrivals_rps"].iloc[-2] * 1.35)


def test_serving_plots_of_a_run_without_services_raise_nothing():
    res = fake()
    res.services = pd.DataFrame()  # no columns at all
    del res.requests
    plot = Plotter(res)
    assert len(plot.latency().axes) == 3 and len(plot.kv_cache().axes) == 2
    assert plot.replicas().axes[0].get_lines() == []
    with pytest.raises(ValueError, match="none"):
        plot.latency("chat")
