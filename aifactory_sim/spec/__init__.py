"""The scenario as frozen pydantic models, and how it is read. Nothing here imports SimPy."""

from .hardware import GPUSpec, ModelSpec
from .inference import InferenceService
from .loader import content_hash, load, parse_value, set_path, validate
from .scenario import Cluster, NodePool, Scenario, TrainingJob

__all__ = [
    "Cluster",
    "GPUSpec",
    "InferenceService",
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
