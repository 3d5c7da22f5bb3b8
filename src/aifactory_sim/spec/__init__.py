"""The scenario as frozen pydantic models, and how it is read. Nothing here imports SimPy."""

from .hardware import GPUSpec, ModelSpec
from .loader import content_hash, load, parse_value, set_path, validate
from .scenario import Cluster, NodePool, Scenario, TrainingJob

__all__ = [
    "Cluster",
    "GPUSpec",
    "ModelSpec",
    "NodePool",
    "Scenario",
    "TrainingJob",
    "content_hash",
    "load",
    "parse_value",
    "set_path",
    "validate",
]
