"""The RLHFJob resource: group, version and names, and the top-level model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from .base import ApiModel
from .spec import RLHFJobSpec
from .status import RLHFJobStatus

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ["rlhf"]
API_VERSION = f"{GROUP}/{VERSION}"

# A DNS-1123 subdomain with a length that leaves room for child-object suffixes
# (pod names are <job>-worker-<n>, and Services need DNS-1035 labels).
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(ApiModel):
    """The part of metadata the job's own checks look at; the rest is kept as it is."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, max_length=45, pattern=NAME_PATTERN)]
    """Job name: lowercase letters, digits and '-', starting with a letter, at most 45 characters."""
    namespace: str | None = None
    """Namespace."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""


class RLHFJob(ApiModel):
    """An RLHF training job: models, algorithm, data, devices and placement."""

    api_version: Literal["rlhf.dev/v1alpha1"] = "rlhf.dev/v1alpha1"
    """rlhf.dev/v1alpha1."""
    kind: Literal["RLHFJob"] = "RLHFJob"
    """RLHFJob."""
    metadata: ObjectMeta
    """Object metadata."""
    spec: RLHFJobSpec
    """The desired run."""
    status: RLHFJobStatus | None = None
    """Observed state."""
