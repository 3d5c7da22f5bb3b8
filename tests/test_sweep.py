"""Sweeps: designs, seeds that follow the point and not the worker, the resumable folder,
failing points, the confidence interval, the Pareto front, plots and the command line."""

from __future__ import annotations

import importlib
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import aifactory_sim as af
from aifactory_sim.cli import main
from aifactory_sim.errors import ScenarioError

sweep_module = importlib.import_module("aifactory_sim.sweep")  # the attribute is the function

#: Half a minute of a small chat service: about 150 requests, some 20 ms a run.
SERVE = {
    "name": "sweep-serve", "seed": 3, "duration": 30,
    "cluster": {"node_pools": [{"name": "h100", "nodes": 1, "gpu": "H100-SXM"}]},
    "inference": [{
        "name": "chat", "model": "llama3-8b", "precision": "fp8", "tp": 1, "replicas": 2,
        "cold_start": {"container_s": 0, "weights_s": 0},
        "traffic": {"kind": "poisson", "rate_rps": 5},
        "prompt_tokens": {"kind": "lognormal", "median": 500, "sigma": 0.8, "max": 4096},
        "output_tokens": {"kind": "geometric", "mean": 100, "max": 1024},
    }],
}
GRID = {"inference.0.replicas": [1, 2], "inference.0.traffic.rate_rps": [4.0, 8.0]}


def quick(**kw):  # type: ignore[no-untyped-def]
    kw.setdefault("executor", "inprocess")
    kw.setdefault("progress", False)
    return af.sweep(SERVE, **kw)


def test_grid_expands_to_the_cartesian_product_with_one_column_per_path():
    df = quick(grid=GRID, seeds=2)
    assert list(df.columns[:6]) == [*GRID, "point", "replication", "seed", "error"]
    assert len(df) == 8
    pairs = list(zip(df["inference.0.replicas"], df["inference.0.traffic.rate_rps"],
                     strict=True))
    assert pairs == [(1, 4.0)] * 2 + [(1, 8.0)] * 2 + [(2, 4.0)] * 2 + [(2, 8.0)] * 2
    assert list(df["point"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(df["replication"]) == [0, 1] * 4
    assert df["error"].isna().all()
    for col in ("ledger_gpu_h.inference_busy", "inference.chat.ttft_s.p99",
                "inference.chat.usd_per_mtok.private", "utilisation.serving"):
        assert col in df.columns and df[col].notna().all()
    assert df["seed"].nunique() == 8  # every run its own seed
    assert (df["inference.chat.replicas_max"] == df["inference.0.replicas"]).all()


def test_list_index_paths_reach_a_pool_and_a_job():
    scenario = {
        "name": "sweep-train", "seed": 0, "duration": "1h",
        "cluster": {"node_pools": [{"name": "p", "nodes": 8, "gpu": "H100-SXM"}]},
        "training": [{"name": "a", "model": "llama3-8b", "tokens": 1e9, "seq_len": 4096,
                      "global_batch_seqs": 256, "parallel": {"dp": 32}}],
    }
    df = af.sweep(scenario, {"cluster.node_pools.0.nodes": [4, 8],
                             "training.0.parallel.dp": [16, 32]},
                  executor="inprocess", progress=False)
    assert list(df["gpus"]) == [32, 32, 64, 64]
    assert list(df["training.a.dp"]) == [16, 32, 16, 32]
    assert df["error"].isna().all()


def test_the_design_is_checked_before_anything_runs():
    with pytest.raises(ScenarioError, match=r"inference\.0\.replica: .*no such field"):
        quick(grid={"inference.0.replica": [1]})
    with pytest.raises(ScenarioError, match=r"index 3 is out of range|no such field"):
        quick(grid={"inference.3.replicas": [1]})
    with pytest.raises(ScenarioError, match="seed cannot be swept"):
        quick(grid={"seed": [1, 2]})
    with pytest.raises(ScenarioError, match="list of values"):
        quick(grid={"inference.0.replicas": 2})
    with pytest.raises(ScenarioError, match="lo < hi"):
        quick(ranges={"inference.0.traffic.rate_rps": (8, 2)}, samples=3)
    with pytest.raises(ScenarioError, match="samples=N"):
        quick(ranges={"inference.0.traffic.rate_rps": (2, 8)})
    with pytest.raises(ScenarioError, match="design"):
        quick(ranges={"inference.0.traffic.rate_rps": (2, 8)}, samples=3, design="sobol")
    with pytest.raises(ScenarioError, match="seeds"):
        quick(seeds=0)
    with pytest.raises(ScenarioError, match="executor"):
        quick(executor="threads")


def test_latin_hypercube_hits_every_stratum_of_every_dimension_once():
    rng = np.random.default_rng(1)
    n, d = 25, 3
    u = sweep_module.latin_hypercube(n, d, rng)
    assert u.shape == (n, d) and ((u >= 0) & (u < 1)).all()
    for j in range(d):
        assert sorted(np.floor(u[:, j] * n).astype(int)) == list(range(n))


def test_lhs_points_lie_in_their_ranges_stratified_and_integer_fields_are_rounded():
    ranges = {"inference.0.traffic.rate_rps": (2.0, 10.0),
              "cluster.node_pools.0.nic_gbit_s": (100.0, 400.0),
              "inference.0.replicas": (1, 3)}
    n = 6
    df = quick(ranges=ranges, samples=n)
    assert list(df.columns[:3]) == list(ranges) and len(df) == n
    for path, (lo, hi) in list(ranges.items())[:2]:
        x = df[path].to_numpy()
        assert ((x >= lo) & (x <= hi)).all()
        assert sorted(np.floor((x - lo) / (hi - lo) * n).astype(int)) == list(range(n))
    reps = df["inference.0.replicas"]
    assert pd.api.types.is_integer_dtype(reps) and set(reps) <= {1, 2, 3}
    random = quick(ranges=ranges, samples=n, design="random")
    assert not np.allclose(random.iloc[:, 0], df.iloc[:, 0])
    assert random.iloc[:, 0].between(2.0, 10.0).all()
    # grid x samples: every grid value with each sample
    both = quick(grid={"inference.0.replicas": [1, 2]},
                 ranges={"inference.0.traffic.rate_rps": (2.0, 10.0)}, samples=3)
    assert list(both["inference.0.replicas"]) == [1, 1, 1, 2, 2, 2]
    assert list(both["inference.0.traffic.rate_rps"][:3]) == list(
        both["inference.0.traffic.rate_rps"][3:])


def test_a_runs_seed_follows_its_point_not_its_position():
    forward = quick(grid={"inference.0.traffic.rate_rps": [4.0, 8.0]}, seeds=2)
    backward = quick(grid={"inference.0.traffic.rate_rps": [8.0, 4.0]}, seeds=2)
    by_point = ["inference.0.traffic.rate_rps", "replication"]
    a = forward.drop(columns="point").sort_values(by_point).reset_index(drop=True)
    b = backward.drop(columns="point").sort_values(by_point).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert sweep_module.point_seed(3, {"x": 1}, 0) != sweep_module.point_seed(3, {"x": 1}, 1)
    assert sweep_module.point_seed(3, {"x": 1}, 0) != sweep_module.point_seed(4, {"x": 1}, 0)


def test_a_failing_point_is_recorded_and_the_others_run(tmp_path: Path):
    df = quick(grid={"inference.0.replicas": [1, 9, 2]}, out=tmp_path / "s")
    assert list(df["error"].isna()) == [True, False, True]
    assert "9 replicas" in df.loc[1, "error"] and "inference.0.replicas" in df.loc[1, "error"]
    assert math.isnan(df.loc[1, "inference.chat.ttft_s.p99"])
    assert df.loc[[0, 2], "inference.chat.ttft_s.p99"].notna().all()
    assert len(list((tmp_path / "s" / "points").glob("*.csv"))) == 3


def test_out_streams_points_and_resume_runs_only_the_missing(tmp_path: Path, monkeypatch):
    out = tmp_path / "sweep"
    first = quick(grid=GRID, seeds=2, out=out)
    files = sorted((out / "points").iterdir())
    assert [f.name for f in files[:3]] == ["p00000-r0.csv", "p00000-r1.csv", "p00001-r0.csv"]
    assert len(files) == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"] == list(GRID)
    assert manifest["scenario_hash"] == af.spec.loader.content_hash(af.load(SERVE))
    assert manifest["version"] == af.__version__
    assert [p["params"] for p in manifest["points"]][1] == {
        "inference.0.replicas": 1, "inference.0.traffic.rate_rps": 8.0}
    table = (out / "sweep.csv").read_text()
    pd.testing.assert_frame_equal(sweep_module._frame(table), first)

    (out / "points" / "p00002-r1.csv").unlink()
    (out / "sweep.csv").unlink()
    ran = []
    real = sweep_module._run_point

    def counting(base, task):  # type: ignore[no-untyped-def]
        ran.append(task[:2])
        return real(base, task)

    monkeypatch.setattr(sweep_module, "_run_point", counting)
    again = quick(grid=GRID, seeds=2, out=out, resume=True)
    assert ran == [(2, 1)]
    pd.testing.assert_frame_equal(again, first)
    assert (out / "sweep.csv").read_text() == table
    ran.clear()
    quick(grid=GRID, seeds=2, out=out, resume=True)
    assert ran == []


def test_a_folder_is_never_overwritten_nor_resumed_with_another_sweep(tmp_path: Path):
    out = tmp_path / "sweep"
    grid = {"inference.0.replicas": [1, 2]}
    quick(grid=grid, out=out)
    with pytest.raises(ScenarioError, match=r"already holds files.*resume"):
        quick(grid=grid, out=out)
    with pytest.raises(ScenarioError, match="another design"):
        quick(grid={"inference.0.replicas": [1, 3]}, out=out, resume=True)
    with pytest.raises(ScenarioError, match="another scenario_hash"):
        quick(grid=grid, out=out, resume=True, overrides={"duration": 20})
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(ScenarioError, match=r"no manifest\.json"):
        quick(grid=grid, out=other, resume=True)
    assert (other / "mine.txt").read_text() == "keep me"


def _table(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"p": p, "point": i, "replication": r, "seed": 0, "error": None, "m": v}
            for i, (p, vs) in enumerate(values.items()) for r, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_summarize_gives_students_t_interval_in_closed_form():
    df = _table({"a": [1.0, 2.0, 6.0], "b": [4.0, 10.0], "c": [5.0]})
    s = af.summarize(df).set_index("p")
    assert list(s.columns) == ["metric", "n", "mean", "std", "ci95_lo", "ci95_hi"]
    # n = 3: t(0.975, 2) = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975 (Student's t, 2 dof)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)
    assert s.loc["a", "n"] == 3 and s.loc["a", "mean"] == pytest.approx(3.0)
    assert s.loc["a", "std"] == pytest.approx(std)
    assert s.loc["a", "ci95_lo"] == pytest.approx(3 - t2 * std / math.sqrt(3), rel=1e-12)
    assert s.loc["a", "ci95_hi"] == pytest.approx(3 + t2 * std / math.sqrt(3), rel=1e-12)
    # n = 2: t(0.975, 1) = tan(pi (p - 1/2)) (Cauchy); std = |x1 - x2| / sqrt(2)
    t1 = math.tan(math.pi * 0.475)
    half = t1 * (6 / math.sqrt(2)) / math.sqrt(2)
    assert (s.loc["b", "ci95_lo"], s.loc["b", "ci95_hi"]) == (
        pytest.approx(7 - half, rel=1e-12), pytest.approx(7 + half, rel=1e-12))
    assert s.loc["c", "n"] == 1 and math.isnan(s.loc["c", "ci95_lo"])


def test_summarize_skips_failed_runs_and_checks_metric_names():
    df = _table({"a": [1.0, 3.0, float("nan")]})
    df.loc[2, "error"] = "boom"
    s = af.summarize(df, "m")
    assert s.loc[0, "n"] == 2 and s.loc[0, "mean"] == pytest.approx(2.0)
    with pytest.raises(ScenarioError, match="no column 'x'"):
        af.summarize(df, ["x"])


def _brute_pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = len(x)
    return np.array([np.isfinite(x[i]) and np.isfinite(y[i]) and not any(
        x[j] <= x[i] and y[j] <= y[i] and (x[j] < x[i] or y[j] < y[i]) for j in range(n)
        if np.isfinite(x[j]) and np.isfinite(y[j])) for i in range(n)])


def test_pareto_front_is_the_non_dominated_set():
    df = pd.DataFrame({"cost": [1, 2, 3, 2, 1, 4, 2, np.nan],
                       "lat": [5, 3, 1, 3, 6, 1, 4, 0]})
    mask = sweep_module.pareto_front(df, "cost", "lat")
    assert list(mask) == [True, True, True, True, False, False, False, False]
    rng = np.random.default_rng(5)
    for _ in range(20):  # ties on a coarse grid, and a few gaps
        x = rng.integers(0, 6, 40).astype(float)
        y = rng.integers(0, 6, 40).astype(float)
        x[rng.random(40) < 0.1] = np.nan
        frame = pd.DataFrame({"x": x, "y": y})
        assert (sweep_module.pareto_front(frame, "x", "y").to_numpy()
                == _brute_pareto(x, y)).all()
        # maximising y is minimising -y
        up = sweep_module.pareto_front(frame, "x", "y", minimize=(True, False)).to_numpy()
        assert (up == _brute_pareto(x, -y)).all()


def test_plots_return_figures_and_save_png(tmp_path: Path):
    from matplotlib.figure import Figure

    from aifactory_sim import sweep_plots

    df = quick(grid=GRID, seeds=2)
    metric = "inference.chat.ttft_s.p99"
    figs = [
        sweep_plots.metric_vs_param(df, metric, "inference.0.traffic.rate_rps",
                                    by="inference.0.replicas", save=tmp_path / "line.png"),
        sweep_plots.heatmap(df, metric, save=tmp_path / "heat.png"),
        sweep_plots.pareto(df, "inference.chat.usd_per_mtok.private", metric,
                           save=tmp_path / "pareto.png"),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    for name in ("line", "heat", "pareto"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ScenarioError, match="name the parameter"):
        sweep_plots.metric_vs_param(df, metric)


@pytest.fixture
def serve_file(tmp_path: Path) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(SERVE))
    return path


def test_cli_sweep_end_to_end(serve_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli"
    args = ["sweep", str(serve_file), "--grid", "inference.0.replicas=1,2",
            "--replications", "2", "--workers", "2", "--out", str(out), "--no-progress",
            "--metric", "inference.chat.ttft_s.p99", "--plot", "inference.chat.ttft_s.p99"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 points x 2 replications" in printed and "inference.chat.ttft_s.p99" in printed
    assert f"wrote {out}/" in printed
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 4 and (out / "sweep-inference.chat.ttft_s.p99.png").is_file()
    # the same sweep again is refused; with --resume nothing is left to run
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert main(["sweep", str(serve_file), "--lhs", "inference.0.traffic.rate_rps=2:8",
                 "--n", "3", "--set", "duration=20", "--no-progress", "--workers", "1"]) == 0
    assert "3 points" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--grid", "inference.0.replicas"], "--grid expects path=v1,v2"),
    (["--lhs", "inference.0.traffic.rate_rps=8:2", "--n", "3"], "--lhs expects path=lo:hi"),
    (["--lhs", "inference.0.traffic.rate_rps=2:8"], "needs --n"),
    (["--n", "3"], "--n needs --lhs or --random"),
    (["--lhs", "a=1:2", "--random", "b=1:2", "--n", "2"], "give one of them"),
    (["--replications", "0"], "--replications must be >= 1"),
    (["--resume"], "--resume needs --out"),
    (["--grid", "inference.0.replicas=1", "--metric", "nope"], "--metric nope"),
    (["--workers", "two"], "invalid int value"),
])
def test_cli_sweep_bad_arguments_exit_2_with_one_line(serve_file: Path, capsys, extra, needle):
    assert main(["sweep", str(serve_file), "--no-progress", "--workers", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_same_frame_from_every_executor():
    """In-process, a process pool of two and a Dask cluster of two give the same table, to
    the byte. Last in the file: the Dask cluster leaves threads behind, and a process pool
    forked after them is best avoided."""
    distributed = pytest.importorskip("distributed")
    kw = dict(grid={"inference.0.replicas": [1, 2]},
              ranges={"inference.0.traffic.rate_rps": (2.0, 8.0)}, samples=2, seeds=2)
    ref = quick(**kw)
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = quick(**kw, executor=pool)
    default = quick(**kw, executor=None, workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        dask = quick(**kw, executor=client)
    for other in (pooled, default, dask):
        pd.testing.assert_frame_equal(other, ref)
        assert other.to_csv(index=False) == ref.to_csv(index=False)
