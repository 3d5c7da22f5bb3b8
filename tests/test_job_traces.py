"""Job-trace readers (spec.job_traces): bundled real samples and each format's column mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aifactory_sim.errors import ScenarioError
from aifactory_sim.spec.job_traces import JOB_TRACE_FORMATS, PUBLISHED, read_job_trace

TRACES = Path(__file__).resolve().parents[1] / "aifactory_sim" / "scenarios" / "traces"

HELIOS_HEADER = (
    "job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue"
)


def test_helios_sample_parses_to_its_own_duration_column():
    trace = read_job_trace("helios", TRACES / "helios-sample.csv")
    assert trace.fmt == "helios" and "HeliosData" in trace.source
    assert list(trace.job_id) == ["1425511", "1425512", "1425513"]
    # the README's duration column (end - start, seconds) for these rows
    assert trace.duration_s.tolist() == [36848.0, 249.0, 675233.0]
    assert trace.status.tolist() == ["completed", "failed", "killed"]
    assert trace.gpus.tolist() == [1, 4, 1]
    assert trace.submit_s.tolist() == [0.0, 26.0, 27.0]


def test_philly_sample_parses_readme_example():
    trace = read_job_trace("philly", TRACES / "philly-sample.json")
    assert trace.gpus.tolist() == [8]
    assert trace.queue_s.tolist() == [30.0]  # 01:11:39 -> 01:12:09
    # first attempt's start to last attempt's end: 2017-10-07 01:12:09 -> 2017-10-09 06:53:12
    assert trace.duration_s.tolist() == [2 * 86400 + 5 * 3600 + 41 * 60 + 3]
    assert trace.group.tolist() == ["ee9e8c"] and trace.user.tolist() == ["ce2f4c"]


def test_helios_mapping(tmp_path):
    path = tmp_path / "Venus" / "cluster_log.csv"
    path.parent.mkdir()
    path.write_text(
        HELIOS_HEADER + "\n"
        "12,uB,vc2,8,32,1,TIMEOUT,2020-04-01 00:10:00,2020-04-01 00:40:00,"
        "2020-04-01 02:40:00,7200,1800\n"
        "11,uA,vc1,2,8,1,COMPLETED,2020-04-01 00:00:00,2020-04-01 00:00:30,"
        "2020-04-01 00:01:30,60,30\n"
        "13,uC,vc1,0,4,1,COMPLETED,2020-04-01 00:20:00,2020-04-01 00:20:00,"
        "2020-04-01 00:30:00,600,0\n"  # a CPU job: dropped
        "14,uD,vc3,1,1,1,CANCELLED,2020-04-01 00:30:00,,,0,0\n"  # never started: dropped
    )
    trace = read_job_trace("helios", path)
    assert trace.job_id.tolist() == ["11", "12"]  # sorted by submission
    assert trace.submit_s.tolist() == [0.0, 600.0]
    assert trace.gpus.tolist() == [2, 8]
    assert trace.duration_s.tolist() == [60.0, 7200.0]
    assert trace.queue_s.tolist() == [30.0, 1800.0]
    assert trace.status.tolist() == ["completed", "failed"]  # TIMEOUT counts as failed
    assert trace.group.tolist() == ["vc1", "vc2"]
    assert trace.cluster_gpus == PUBLISHED["helios"]["Venus"]["cluster_gpus"].value


def test_philly_mapping(tmp_path):
    def attempt(start, end, gpus_per_node):
        detail = [{"ip": f"m{i}", "gpus": [f"gpu{g}" for g in range(n)]} for i, n in
                  enumerate(gpus_per_node)]  # fmt: skip
        return {"start_time": start, "end_time": end, "detail": detail}

    jobs = [
        {"status": "Failed", "vc": "v1", "jobid": "b", "user": "u2",
         "submitted_time": "2017-10-01 00:05:00",
         "attempts": [attempt("2017-10-01 00:06:00", "2017-10-01 00:07:00", [4, 4]),
                      attempt("2017-10-01 00:08:00", "2017-10-01 01:06:00", [8])]},
        {"status": "Killed", "vc": "v2", "jobid": "a", "user": "u1",
         "submitted_time": "2017-10-01 00:00:00",
         "attempts": [attempt("2017-10-01 00:00:10", "2017-10-01 00:00:50", [1])]},
        {"status": "Pass", "vc": "v2", "jobid": "c", "user": "u1",
         "submitted_time": "2017-10-01 00:09:00", "attempts": []},  # never scheduled
        {"status": "Pass", "vc": "v2", "jobid": "d", "user": "u1",
         "submitted_time": "2017-10-01 00:09:00",
         "attempts": [attempt("2017-10-01 00:09:10", None, [2])]},  # still running
    ]  # fmt: skip
    path = tmp_path / "cluster_job_log"
    path.write_text(json.dumps(jobs))
    trace = read_job_trace("philly", path)
    assert trace.job_id.tolist() == ["a", "b"]
    assert trace.submit_s.tolist() == [0.0, 300.0]
    assert trace.gpus.tolist() == [1, 8]  # first attempt's GPUs: 4 + 4 on two servers
    assert trace.queue_s.tolist() == [10.0, 60.0]
    assert trace.duration_s.tolist() == [40.0, 3600.0]  # first start -> last end
    assert trace.status.tolist() == ["killed", "failed"]
    assert trace.cluster_gpus is None


def test_pai_mapping(tmp_path):
    # Headerless, as released: pai_job_table then pai_task_table columns.
    (tmp_path / "pai_job_table.csv").write_text(
        "jobB,iB,userB,Failed,1000.0,1600.0\n"
        "jobA,iA,userA,Terminated,500.0,900.0\n"
        "jobC,iC,userC,Terminated,550.0,700.0\n"  # CPU only: dropped
        "jobD,iD,userD,Running,560.0,\n"  # no end: dropped
    )
    (tmp_path / "pai_task_table.csv").write_text(
        # jobA: a PS task (0 GPU) and 2 workers at 50% each -> 1 GPU; waits 600 - 500 s
        "jobA,ps,1.0,Terminated,620.0,900.0,600.0,29.3,,MISC\n"
        "jobA,worker,2.0,Terminated,600.0,900.0,400.0,29.3,50.0,MISC\n"
        # jobB: 3 instances at 100% -> 3 GPUs, plus a 25% task -> 3.25, held as 4
        "jobB,worker,3.0,Failed,1100.0,1600.0,800.0,10.0,100.0,V100\n"
        "jobB,evaluator,1.0,Failed,1200.0,1600.0,100.0,10.0,25.0,V100\n"
        "jobC,tensorflow,1.0,Terminated,560.0,700.0,600.0,8.0,0.0,CPU\n"
        "jobD,worker,1.0,Running,570.0,0.0,600.0,8.0,100.0,T4\n"
    )
    trace = read_job_trace("alibaba-pai", tmp_path / "pai_job_table.csv")
    assert trace.job_id.tolist() == ["jobA", "jobB"]
    assert trace.submit_s.tolist() == [0.0, 500.0]
    assert trace.gpus.tolist() == [1, 4]
    assert trace.queue_s.tolist() == [100.0, 100.0]  # earliest task launch - job submission
    assert trace.duration_s.tolist() == [300.0, 500.0]  # job end - earliest task launch
    assert trace.status.tolist() == ["completed", "failed"]
    assert trace.group.tolist() == ["userA", "userB"]
    # a folder holding both tables reads the same
    assert read_job_trace("alibaba-pai", tmp_path).job_id.tolist() == ["jobA", "jobB"]


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(HELIOS_HEADER.replace(",gpu_num", "") + "\n1,u,vc,1,1,COMPLETED,,,,0,0\n")
    with pytest.raises(ScenarioError, match="no column gpu_num"):
        read_job_trace("helios", path)


def test_unparsable_value_names_column_and_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        HELIOS_HEADER + "\n1,u,vc,1,1,1,COMPLETED,yesterday,2020-04-01 00:00:00,"
        "2020-04-01 00:01:00,60,0\n"
    )
    with pytest.raises(ScenarioError, match=r"column submit_time .* data row 1 has 'yesterday'"):
        read_job_trace("helios", path)


def test_unknown_status_names_allowed(tmp_path):
    path = tmp_path / "log.json"
    job = {"status": "Done", "vc": "v", "jobid": "j", "user": "u", "attempts": []}
    job["submitted_time"] = "2017-10-01 00:00:00"
    path.write_text(json.dumps([job]))
    with pytest.raises(ScenarioError, match="allowed: Pass, Killed, Failed"):
        read_job_trace("philly", path)


def test_unknown_format_names_the_allowed_ones(tmp_path):
    with pytest.raises(ScenarioError, match="helios, philly, alibaba-pai") as err:
        read_job_trace("slurm", tmp_path / "x.csv")
    assert err.value.path == "workload_trace.format"
    assert JOB_TRACE_FORMATS == ("helios", "philly", "alibaba-pai")


def test_missing_file_and_missing_task_table(tmp_path):
    with pytest.raises(ScenarioError, match="no such job-trace file"):
        read_job_trace("helios", tmp_path / "absent.csv")
    (tmp_path / "pai_job_table.csv").write_text("j,i,u,Terminated,1.0,2.0\n")
    with pytest.raises(ScenarioError, match=r"pai_task_table\.csv"):
        read_job_trace("alibaba-pai", tmp_path / "pai_job_table.csv")


def test_published_figures_carry_sources():
    venus = PUBLISHED["helios"]["Venus"]
    assert venus["median_duration_s"].value == 204.0
    figures = [fig for trace in PUBLISHED.values() for cl in trace.values() for fig in cl.values()]
    assert figures and all(fig.source and np.isfinite(fig.value) for fig in figures)
