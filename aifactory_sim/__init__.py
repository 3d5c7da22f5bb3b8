"""aifactory_sim: a discrete-event simulator of an AI factory.

import aifactory_sim as af
sim = af.load("scenarios/pretrain-llama3-70b.yaml")
res = af.run(sim)
res.summary["ledger_gpu_h"]
df = af.sweep(sim, {"training.0.parallel.dp": [16, 32]}, seeds=3)
af.summarize(df, "utilisation.training")
"""

from __future__ import annotations

from .errors import ScenarioError
from .estimate import TrainingEstimate, estimate_training, plan_training
from .plan_serving import pareto_front, plan_serving, plot_serving
from .spec import Scenario, load
from .spec.estate import Estate
from .sweep import summarize, sweep
from .version import __version__


def run(scenario, *, overrides=None):  # type: ignore[no-untyped-def]
    """Play a scenario (a Scenario, a path or a mapping) out in simulated time; a `Results`."""
    from .runner import run as _run

    if not isinstance(scenario, Scenario | Estate) or overrides:
        scenario = load(scenario, overrides)
    return _run(scenario)


__all__ = [
    "Estate",
    "Scenario",
    "ScenarioError",
    "TrainingEstimate",
    "__version__",
    "estimate_training",
    "load",
    "pareto_front",
    "plan_serving",
    "plan_training",
    "plot_serving",
    "run",
    "summarize",
    "sweep",
]
