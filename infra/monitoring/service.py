"""What the generated rules and dashboard point at: the server's Prometheus job and its workload."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MonitoredService:
    job: str
    """The `job` label Prometheus gives the server's targets (the Service name under the operator)."""
    namespace: str
    deployment: str
    autoscaler: str | None = None
    """The HorizontalPodAutoscaler's name; None when the replica count is fixed."""

    @property
    def job_matcher(self) -> dict[str, str]:
        return {"job": self.job}
