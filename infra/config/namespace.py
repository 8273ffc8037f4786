"""Keys of the namespace's guard rails: its resource quota and the defaults of its LimitRange."""

from __future__ import annotations

from pydantic import Field

from infra.config.base import Section
from infra.quantity import Quantity


class QuotaConfig(Section):
    enabled: bool = True
    requests_cpu: Quantity = "64"
    requests_memory: Quantity = "512Gi"
    limits_cpu: Quantity = "128"
    limits_memory: Quantity = "1Ti"
    gpus: int = Field(16, ge=0)
    pods: int = Field(40, ge=1)
    storage: Quantity = "2Ti"


class LimitRangeConfig(Section):
    """Defaults for containers that state no resources (the workload itself always states them)."""

    default_cpu: Quantity = "500m"
    default_memory: Quantity = "512Mi"
    default_request_cpu: Quantity = "100m"
    default_request_memory: Quantity = "128Mi"
