"""Job traces: public logs of GPU training jobs, read in each trace's own layout.

`read_job_trace(fmt, path)` turns one of three public cluster traces into a `JobTrace`, one row
per GPU job sorted by submission, for the engine to replay (issue 19). Each format is read from
its own columns with its own time conventions; the sources are cited where each column is used:

- ``helios``: SenseTime Helios, ``cluster_log.csv`` (S-Lab-System-Group/HeliosData; Hu et al.,
  "Characterization and Prediction of Deep Learning Workloads in Large-Scale GPU Datacenters",
  SC'21).
- ``philly``: Microsoft Philly, ``cluster_job_log`` JSON (msr-fiddle/philly-traces; Jeon et al.,
  "Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training Workloads", USENIX
  ATC'19).
- ``alibaba-pai``: Alibaba PAI, ``pai_job_table.csv`` + ``pai_task_table.csv`` of
  cluster-trace-gpu-v2020 (alibaba/clusterdata; Weng et al., "MLaaS in the Wild: Workload
  Analysis and Scheduling in Large-Scale Heterogeneous GPU Clusters", NSDI'22).

What is dropped, in every format: jobs that asked for no GPU (CPU jobs), and jobs without a
recorded start or end (never launched, still running when the log was cut, or a logging gap),
since neither a run time nor a queueing delay can be replayed from them. `submit_s` counts from
the first submission among the jobs kept. Problems with a file raise ScenarioError naming the
file, the column and what is allowed.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import ScenarioError

#: The formats `read_job_trace` reads.
JOB_TRACE_FORMATS = ("helios", "philly", "alibaba-pai")
#: The statuses a JobTrace holds, whatever the trace called them.
JOB_STATUSES = ("completed", "failed", "killed")
#: Where these errors point in a scenario.
WHERE = "workload_trace.path"

SOURCES = {
    "helios": (
        "SenseTime Helios trace, cluster_log.csv (github.com/S-Lab-System-Group/HeliosData); "
        "Hu et al., Characterization and Prediction of Deep Learning Workloads in Large-Scale "
        "GPU Datacenters, SC'21, doi:10.1145/3458817.3476223"
    ),
    "philly": (
        "Microsoft Philly trace, cluster_job_log (github.com/msr-fiddle/philly-traces); Jeon et "
        "al., Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training Workloads, "
        "USENIX ATC'19"
    ),
    "alibaba-pai": (
        "Alibaba PAI trace cluster-trace-gpu-v2020, pai_job_table + pai_task_table "
        "(github.com/alibaba/clusterdata); Weng et al., MLaaS in the Wild: Workload Analysis and "
        "Scheduling in Large-Scale Heterogeneous GPU Clusters, NSDI'22"
    ),
}


class JobTrace(NamedTuple):
    """One row per GPU job, sorted by submission (stable: ties keep file order)."""

    job_id: np.ndarray  # str
    #: the trace's tenant: Helios and Philly `vc` (virtual cluster), PAI `user`
    group: np.ndarray  # str
    user: np.ndarray  # str
    #: seconds since the first submission kept
    submit_s: np.ndarray  # float
    gpus: np.ndarray  # int64, >= 1
    #: run time as the trace records it: end - start
    duration_s: np.ndarray  # float
    #: the trace's own queueing delay, start - submit (NaN where unknown)
    queue_s: np.ndarray  # float
    #: one of JOB_STATUSES
    status: np.ndarray  # str
    fmt: str
    source: str
    #: GPUs of the traced cluster as its publishers state it, for scaling; None where unknown
    cluster_gpus: int | None


class PublishedFigure(NamedTuple):
    """A number a trace's publishers give, with where they give it."""

    value: float
    unit: str
    source: str


# ---- Published figures ---------------------------------------------------------------------
# Only numbers read in the publishers' own files. The Helios per-cluster figures are the
# authors' summary of the full traces (GPU jobs only, times in seconds), committed with the
# paper's artifact; the papers' PDFs were not available to check table numbers against.
_HELIOS_SUMMARY = (
    "HeliosArtifact (github.com/S-Lab-System-Group/HeliosArtifact), "
    "'analysis/1_compare with Philly trace/helios_cluster_summary.csv', the artifact of "
    "Hu et al. SC'21"
)
_HELIOS_COLUMNS = {
    # our name: (summary column, unit)
    "cluster_gpus": ("gpu_num", "GPUs"),
    "gpu_jobs": ("gpu_job_num", "jobs"),
    "mean_duration_s": ("avg_run_time_gpu", "s"),
    "median_duration_s": ("med_run_time_gpu", "s"),
    "mean_queue_s": ("avg_que_time_gpu", "s"),
    "median_queue_s": ("med_que_time_gpu", "s"),
    "mean_gpus_per_job": ("avg_gpu_num", "GPUs"),
    "median_gpus_per_job": ("med_gpu_num", "GPUs"),
    "completed_share": ("complete_rate_gpu", "fraction of GPU jobs"),
    "killed_share": ("cancel_rate_gpu", "fraction of GPU jobs"),
    "failed_share": ("fail_rate_gpu", "fraction of GPU jobs"),
}
# Rows of helios_cluster_summary.csv, in the order of _HELIOS_COLUMNS.
_HELIOS_ROWS = {
    "Venus": (1022, 125303, 13040.598, 204.0, 1253.288, 0.0, 6.736, 1.0, 0.526, 0.272, 0.202),
    "Earth": (997, 427148, 5130.609, 234.0, 319.483, 0.0, 2.101, 1.0, 0.735, 0.136, 0.129),
    "Saturn": (2080, 698896, 5252.927, 124.0, 611.561, 0.0, 4.01, 1.0, 0.582, 0.272, 0.145),
    "Uranus": (2119, 329117, 9163.725, 280.0, 1949.182, 0.0, 4.038, 1.0, 0.607, 0.201, 0.192),
    "total": (6220, 1580464, 6651.681, 206.0, 862.047, 0.0, 3.716, 1.0, 0.624, 0.221, 0.155),
}

#: Per trace (and Helios cluster), figures a replay can be held against.
PUBLISHED: dict[str, dict[str, dict[str, PublishedFigure]]] = {
    "helios": {
        cluster: {
            name: PublishedFigure(float(value), unit, f"{_HELIOS_SUMMARY}, column {column}")
            for (name, (column, unit)), value in zip(_HELIOS_COLUMNS.items(), row, strict=True)
        }
        for cluster, row in _HELIOS_ROWS.items()
    },
    "philly": {
        "all": {
            "jobs": PublishedFigure(
                117325.0,
                "jobs",
                "msr-fiddle/philly-traces README.md, 'Total number of jobs' (submitted "
                "2017-08-07 to 2017-12-22)",
            ),
        },
    },
    "alibaba-pai": {
        "all": {
            "cluster_gpus": PublishedFigure(
                6500.0,
                "GPUs",
                "alibaba/clusterdata cluster-trace-gpu-v2020/README.md, 'over 6,500 GPUs (on "
                "~1800 machines)', July-August 2020",
            ),
        },
    },
}

_HELIOS_CLUSTERS = ("Venus", "Earth", "Saturn", "Uranus")


def read_job_trace(fmt: str, path: str | Path) -> JobTrace:
    """The GPU jobs of a public trace file in format `fmt` (one of JOB_TRACE_FORMATS), sorted by
    submission. CPU jobs and jobs without a start or end are dropped (see the module doc)."""
    if fmt not in JOB_TRACE_FORMATS:
        raise ScenarioError(
            f"unknown job-trace format {fmt!r}; allowed: {', '.join(JOB_TRACE_FORMATS)}",
            path="workload_trace.format",
        )
    file = Path(path)
    if fmt == "helios":
        return _read_helios(file)
    if fmt == "philly":
        return _read_philly(file)
    return _read_pai(file)


# ---- Helios --------------------------------------------------------------------------------
# HeliosData README, "Schema and Description" of cluster_log.csv: job_id, user (hashed, 'u'
# prefix), vc (hashed virtual cluster, 'vc' prefix), gpu_num (GPUs required), cpu_num,
# node_num, state, submit_time, start_time, end_time, duration (end_time - start_time, seconds),
# queue (start_time - submit_time, seconds). Times are wall-clock "YYYY-MM-DD HH:MM:SS" strings
# without a zone (the README's example rows; HeliosArtifact trace_parser.py parses them as such).
_HELIOS_NEEDED = ("job_id", "user", "vc", "gpu_num", "state", "submit_time", "start_time",
                  "end_time")  # fmt: skip
# README note 2: COMPLETED, CANCELLED (ended by the user), FAILED, TIMEOUT and NODE_FAIL, the
# last two "regarded as failed"; SUSPENDED happened once and the authors ignore it, as we do.
_HELIOS_STATES = {
    "COMPLETED": "completed",
    "CANCELLED": "killed",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
}
_HELIOS_IGNORED = ("SUSPENDED",)


def _read_helios(path: Path) -> JobTrace:
    frame = _read_csv(path, header=True)
    _require(frame.columns, _HELIOS_NEEDED, path, "helios (cluster_log.csv)")
    gpus = _whole_numbers(frame["gpu_num"], "gpu_num", path)
    submit = _datetimes(frame["submit_time"], "submit_time", path)
    start = _datetimes(frame["start_time"], "start_time", path)
    end = _datetimes(frame["end_time"], "end_time", path)
    states = [str(s).strip().upper() for s in frame["state"].tolist()]
    _check_states(
        states, frame["state"].tolist(), {*_HELIOS_STATES, *_HELIOS_IGNORED}, "state", path
    )
    keep = (gpus > 0) & ~np.isnan(start) & ~np.isnan(end) & ~np.isnan(submit)
    keep &= np.array([s not in _HELIOS_IGNORED for s in states], dtype=bool)
    status = [_HELIOS_STATES.get(s, "") for s in states]
    return _finish(
        "helios",
        path,
        job_id=_strings(frame["job_id"]),
        group=_strings(frame["vc"]),
        user=_strings(frame["user"]),
        submit=submit,
        start=start,
        end=end,
        gpus=gpus,
        status=np.array(status, dtype=str),
        keep=keep,
        cluster_gpus=_helios_cluster_gpus(path),
    )


def _helios_cluster_gpus(path: Path) -> int:
    """GPUs of the Helios cluster a log comes from, read from its folder name (HeliosData keeps
    data/<Cluster>/cluster_log.csv); all four released clusters where the name does not say."""
    parts = {p.lower() for p in path.resolve().parts}
    for cluster in _HELIOS_CLUSTERS:
        if cluster.lower() in parts:
            return int(PUBLISHED["helios"][cluster]["cluster_gpus"].value)
    return int(PUBLISHED["helios"]["total"]["cluster_gpus"].value)


# ---- Philly --------------------------------------------------------------------------------
# philly-traces README, cluster_job_log: a JSON list of jobs with keys status ("Pass", "Killed"
# or "Failed"), vc (hashed virtual cluster), jobid, attempts (list of {start_time, end_time,
# detail: [{ip, gpus: [...]}]}), submitted_time and user (hashed). An attempt may lack a start
# or end (logging error); a last attempt without an end was still running at the snapshot.
# The repository's "Philly Trace Analysis" notebook defines the job's GPUs as the GPUs listed in
# its first attempt's details, its run time as last attempt's end - first attempt's start, and
# its queueing delay as first attempt's start - submitted_time; we follow it. Times are
# "%Y-%m-%d %H:%M:%S" (the notebook's DATE_FORMAT_STR), missing ones None, "None" or "".
_PHILLY_NEEDED = ("jobid", "status", "vc", "user", "submitted_time", "attempts")
_EPOCH = datetime(1970, 1, 1)
_PHILLY_STATES = {"Pass": "completed", "Killed": "killed", "Failed": "failed"}


def _read_philly(path: Path) -> JobTrace:
    if not path.is_file():
        raise ScenarioError(f"no such job-trace file: {path}", path=WHERE)
    try:
        jobs = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read {path} as JSON: {exc}", path=WHERE) from None
    if isinstance(jobs, dict):  # one job on its own, as the README's example shows it
        jobs = [jobs]
    if not isinstance(jobs, list) or not jobs:
        raise ScenarioError(
            f"{path}: a Philly cluster_job_log is a JSON list of jobs; found no jobs", path=WHERE
        )
    ids, groups, users, states = [], [], [], []
    submit, start, end, gpus = [], [], [], []
    for n, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise ScenarioError(f"{path}: job {n + 1} is not a JSON object", path=WHERE)
        missing = [k for k in _PHILLY_NEEDED if k not in job]
        if missing:
            raise ScenarioError(
                f"{path}: job {n + 1} has no key {missing[0]} (philly cluster_job_log needs "
                f"{', '.join(_PHILLY_NEEDED)})",
                path=WHERE,
            )
        status = _PHILLY_STATES.get(str(job["status"]))
        if status is None:
            raise ScenarioError(
                f"{path}: key status of job {n + 1} is {job['status']!r}; allowed: "
                f"{', '.join(_PHILLY_STATES)}",
                path=WHERE,
            )
        attempts = job["attempts"]
        if not isinstance(attempts, list):
            raise ScenarioError(f"{path}: key attempts of job {n + 1} is not a list", path=WHERE)
        ids.append(str(job["jobid"]))
        groups.append(str(job["vc"]))
        users.append(str(job["user"]))
        states.append(status)
        submit.append(_philly_time(job["submitted_time"], "submitted_time", n, path))
        if attempts:
            first, last = attempts[0], attempts[-1]
            start.append(_philly_time(first.get("start_time"), "attempts.start_time", n, path))
            end.append(_philly_time(last.get("end_time"), "attempts.end_time", n, path))
            details = first.get("detail") or []
            gpus.append(sum(len(d.get("gpus") or []) for d in details if isinstance(d, dict)))
        else:  # the README: "A job may have no recorded scheduling attempts"
            start.append(math.nan)
            end.append(math.nan)
            gpus.append(0)
    start_a, end_a, submit_a = (np.array(x, dtype=float) for x in (start, end, submit))
    gpus_a = np.array(gpus, dtype=np.int64)
    keep = (gpus_a > 0) & ~np.isnan(start_a) & ~np.isnan(end_a) & ~np.isnan(submit_a)
    return _finish(
        "philly",
        path,
        job_id=np.array(ids, dtype=str),
        group=np.array(groups, dtype=str),
        user=np.array(users, dtype=str),
        submit=submit_a,
        start=start_a,
        end=end_a,
        gpus=gpus_a,
        status=np.array(states, dtype=str),
        keep=keep,
        # The philly-traces README states no cluster size; the ATC'19 text was not checked.
        cluster_gpus=None,
    )


def _philly_time(value: Any, key: str, job: int, path: Path) -> float:
    """Seconds since the epoch of a zone-less Philly time; NaN where the log has none."""
    if value is None or str(value).strip() in ("", "None"):
        return math.nan
    try:
        stamp = datetime.strptime(str(value).strip(), "%Y-%m-%d %H:%M:%S")
    except (ValueError, TypeError):
        raise ScenarioError(
            f"{path}: key {key} of job {job + 1} is {value!r}; allowed: a time as "
            "'YYYY-MM-DD HH:MM:SS', or None",
            path=WHERE,
        ) from None
    return (stamp - _EPOCH).total_seconds()


# ---- Alibaba PAI ---------------------------------------------------------------------------
# cluster-trace-gpu-v2020 README and its .header files: the CSVs have no header row.
# pai_job_table: job_name, inst_id, user, status, start_time ("timestamp of job submission
# time"), end_time ("timestamp of job completion time"); status is one of Running, Terminated,
# Failed, Waiting, "only 'Terminated' tasks are successful".
# pai_task_table: job_name, task_name, inst_num (instances launched), status, start_time (task
# launch), end_time, plan_cpu, plan_mem, plan_gpu ("number of GPUs requested in percentage (i.e.,
# 50.0 is 50% GPU)"; each instance inherits it), gpu_type.
# Times are seconds, shifted by a constant (only differences mean anything). "The gap between
# job.start_time and the earliest task.start_time in the job implies its wait time" is the
# queueing delay; the repository's analysis/utils.py treats a start_time of 0 as not started.
_PAI_JOB_COLUMNS = ("job_name", "inst_id", "user", "status", "start_time", "end_time")
_PAI_TASK_COLUMNS = ("job_name", "task_name", "inst_num", "status", "start_time", "end_time",
                     "plan_cpu", "plan_mem", "plan_gpu", "gpu_type")  # fmt: skip
_PAI_JOB_FILE = "pai_job_table.csv"
_PAI_TASK_FILE = "pai_task_table.csv"
_PAI_STATES = {"Terminated": "completed", "Failed": "failed"}
_PAI_UNFINISHED = ("Running", "Waiting")
_PAI_CLUSTER_GPUS = 6500


def _read_pai(path: Path) -> JobTrace:
    import pandas as pd

    job_file, task_file = _pai_files(path)
    jobs = _read_csv(job_file, header=False, names=_PAI_JOB_COLUMNS)
    tasks = _read_csv(task_file, header=False, names=_PAI_TASK_COLUMNS)
    submit = _numbers(jobs["start_time"], "start_time", job_file)
    job_end = _numbers(jobs["end_time"], "end_time", job_file)
    inst = _numbers(tasks["inst_num"], "inst_num", task_file, missing=0.0)
    plan_gpu = _numbers(tasks["plan_gpu"], "plan_gpu", task_file, missing=0.0)  # CPU-only tasks
    launch = _numbers(tasks["start_time"], "start_time", task_file)
    launch[launch <= 0] = np.nan
    per_task = pd.DataFrame(
        {"job_name": tasks["job_name"].astype(str), "gpu": inst * plan_gpu / 100.0, "t": launch}
    )
    by_job = per_task.groupby("job_name", sort=False).agg(gpu=("gpu", "sum"), t=("t", "min"))
    names = jobs["job_name"].astype(str)
    gpu_frac = names.map(by_job["gpu"]).to_numpy(dtype=float)
    first_launch = names.map(by_job["t"]).to_numpy(dtype=float)
    # A job asks for the sum over its tasks of inst_num x plan_gpu/100 GPUs; shares of a GPU
    # (plan_gpu < 100) are rounded up, since a replayed job holds whole GPUs.
    gpus = np.where(np.isnan(gpu_frac), 0, np.ceil(np.round(np.nan_to_num(gpu_frac), 6)))
    raw_states = [str(s).strip() for s in jobs["status"].tolist()]
    _check_states(raw_states, raw_states, {*_PAI_STATES, *_PAI_UNFINISHED}, "status", job_file)
    job_end[job_end <= 0] = np.nan
    keep = (gpus > 0) & ~np.isnan(first_launch) & ~np.isnan(job_end) & ~np.isnan(submit)
    keep &= np.array([s in _PAI_STATES for s in raw_states], dtype=bool)
    users = _strings(jobs["user"])
    return _finish(
        "alibaba-pai",
        job_file,
        job_id=_strings(jobs["job_name"]),
        group=users,
        user=users,
        submit=submit,
        start=first_launch,
        end=job_end,
        gpus=gpus.astype(np.int64),
        status=np.array([_PAI_STATES.get(s, "") for s in raw_states], dtype=str),
        keep=keep,
        cluster_gpus=_PAI_CLUSTER_GPUS,
    )


def _pai_files(path: Path) -> tuple[Path, Path]:
    """The job and task tables: `path` is a folder holding both, or the job table with the
    task table beside it."""
    if path.is_dir():
        job_file, task_file = path / _PAI_JOB_FILE, path / _PAI_TASK_FILE
    else:
        job_file, task_file = path, path.with_name(_PAI_TASK_FILE)
    for file, what in ((job_file, "job table"), (task_file, "task table")):
        if not file.is_file():
            raise ScenarioError(
                f"no such file: {file} (the alibaba-pai format reads {_PAI_JOB_FILE} and "
                f"{_PAI_TASK_FILE} from one folder; this is its {what})",
                path=WHERE,
            )
    return job_file, task_file


# ---- Shared --------------------------------------------------------------------------------
def _finish(
    fmt: str,
    path: Path,
    *,
    job_id: np.ndarray,
    group: np.ndarray,
    user: np.ndarray,
    submit: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    gpus: np.ndarray,
    status: np.ndarray,
    keep: np.ndarray,
    cluster_gpus: int | None,
) -> JobTrace:
    """Keep the replayable jobs, sort them by submission and count time from the first."""
    if not keep.any():
        raise ScenarioError(
            f"{path} holds no GPU job with a start and an end ({keep.size} rows read)",
            path=WHERE,
        )
    submit, start, end = submit[keep], start[keep], end[keep]
    if np.any(end < start):
        row = int(np.flatnonzero(end < start)[0])
        raise ScenarioError(f"{path}: job {job_id[keep][row]} ends before it starts", path=WHERE)
    order = np.argsort(submit, kind="stable")
    queue = start - submit
    # A start logged before the submission is a clock or logging fault, not a delay.
    queue = np.where(queue < 0, np.nan, queue)
    return JobTrace(
        job_id=job_id[keep][order],
        group=group[keep][order],
        user=user[keep][order],
        submit_s=(submit - submit.min())[order],
        gpus=gpus[keep].astype(np.int64)[order],
        duration_s=(end - start)[order],
        queue_s=queue[order],
        status=status[keep][order],
        fmt=fmt,
        source=SOURCES[fmt],
        cluster_gpus=cluster_gpus,
    )


def _read_csv(path: Path, *, header: bool, names: tuple[str, ...] = ()) -> Any:
    import pandas as pd

    if not path.is_file():
        raise ScenarioError(f"no such job-trace file: {path}", path=WHERE)
    try:
        if header:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        else:
            frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read {path} as CSV: {exc}", path=WHERE) from None
    if not header:
        # Headerless tables, as released; a copy that kept the .header line is read too.
        if frame.shape[1] != len(names):
            raise ScenarioError(
                f"{path} has {frame.shape[1]} columns; this table has {len(names)} "
                f"({', '.join(names)}) and no header row",
                path=WHERE,
            )
        frame.columns = list(names)
        if len(frame) and [str(v).strip() for v in frame.iloc[0]] == list(names):
            frame = frame.iloc[1:].reset_index(drop=True)
    else:
        frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise ScenarioError(f"{path} holds no jobs (no data rows)", path=WHERE)
    return frame


def _require(columns: Any, needed: tuple[str, ...], path: Path, layout: str) -> None:
    have = [str(c) for c in columns]
    for name in needed:
        if name not in have:
            raise ScenarioError(
                f"{path} has no column {name} ({layout} layout needs {', '.join(needed)}); "
                f"its columns: {have}",
                path=WHERE,
            )


def _strings(column: Any) -> np.ndarray:
    return np.array([str(v).strip() for v in column.tolist()], dtype=str)


def _blank(column: Any) -> np.ndarray:
    text = column.astype(str).str.strip()
    return np.asarray(text.isin(["", "None", "nan", "NaN", "NULL", "\\N"]).to_numpy(), dtype=bool)


def _numbers(column: Any, name: str, path: Path, *, missing: float = math.nan) -> np.ndarray:
    """A numeric column; blank cells become `missing`, anything else unparsable is an error."""
    import pandas as pd

    blank = _blank(column)
    values = np.array(pd.to_numeric(column.where(~blank, None), errors="coerce"), dtype=float)
    bad = np.isnan(values) & ~blank
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ScenarioError(
            f"{path}: column {name} must hold numbers; data row {row + 1} has {column.iloc[row]!r}",
            path=WHERE,
        )
    values[blank] = missing
    return values


def _whole_numbers(column: Any, name: str, path: Path) -> np.ndarray:
    values = _numbers(column, name, path)
    bad = np.isnan(values) | (values != np.floor(values)) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ScenarioError(
            f"{path}: column {name} must hold whole counts (0 or more); data row {row + 1} has "
            f"{column.iloc[row]!r}",
            path=WHERE,
        )
    return values.astype(np.int64)


def _check_states(
    states: list[str], raw: list[Any], allowed: set[str], column: str, path: Path
) -> None:
    """Refuse a state the format does not define, naming the file, column and row."""
    for row, state in enumerate(states):
        if state not in allowed:
            raise ScenarioError(
                f"{path}: column {column} has {raw[row]!r} in data row {row + 1}; "
                f"allowed: {', '.join(sorted(allowed))}",
                path=WHERE,
            )


def _datetimes(column: Any, name: str, path: Path) -> np.ndarray:
    """Seconds since the epoch of zone-less 'YYYY-MM-DD HH:MM:SS' times; NaN where blank."""
    import pandas as pd

    blank = _blank(column)
    stamps = pd.to_datetime(column.where(~blank, None), format="%Y-%m-%d %H:%M:%S", errors="coerce")
    bad = np.asarray(stamps.isna().to_numpy(), dtype=bool) & ~blank
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ScenarioError(
            f"{path}: column {name} must hold times as 'YYYY-MM-DD HH:MM:SS' (or be empty); "
            f"data row {row + 1} has {column.iloc[row]!r}",
            path=WHERE,
        )
    # NaT (blank) becomes NaN; the epoch is arbitrary, only differences are used
    return np.array((stamps - pd.Timestamp(0)).dt.total_seconds(), dtype=float)
