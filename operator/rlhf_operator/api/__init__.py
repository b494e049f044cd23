"""The RLHFJob API: pydantic models (the CRD is generated from them), the
algorithms' call graphs, and the checks `rlhfctl validate` and the operator share."""

from .checks import FieldError, semantic_errors
from .dataflow import Call, calls_for, dependencies
from .job import API_VERSION, GROUP, KIND, PLURAL, VERSION, RLHFJob
from .manifests import Problem, load_jobs, validate_object, validate_text
from .spec import RLHFJobSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Call",
    "FieldError",
    "Problem",
    "RLHFJob",
    "RLHFJobSpec",
    "calls_for",
    "dependencies",
    "load_jobs",
    "semantic_errors",
    "validate_object",
    "validate_text",
]
