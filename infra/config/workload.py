"""Keys of the serving workload: image, model, GPUs, resources, replicas and autoscaling, server settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model

from inference.config import ServerConfig
from infra.config.base import ComputeResources, Section
from infra.quantity import Quantity


class RegistryConfig(Section):
    """A private image registry; its password is the secret `registryPassword`."""

    server: str
    username: str


class ModelConfig(Section):
    source: Literal["demo", "bucket", "volume"] = Field(
        "bucket",
        description="demo: the server makes a tiny random model; bucket: an init container syncs the "
        "weights from the cloud's model bucket into the volume; volume: the volume is filled otherwise.",
    )
    bucket_prefix: str = Field("models/current", description="Path of the weights inside the bucket.")
    storage_size: Quantity = "100Gi"
    access_mode: Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"] = (
        "ReadWriteOnce"
    )
    load_timeout_seconds: int = Field(
        1800, ge=60, le=86400, description="How long a pod may take to load the model before it is ready."
    )


class GpuConfig(Section):
    count: int = Field(1, ge=0, le=16, description="GPUs per pod; 0 runs on CPU.")
    type: str | None = Field(
        None, description="GPU product label value (nvidia.com/gpu.product) the pods must land on."
    )
    resource_name: str = "nvidia.com/gpu"


class ResourcesConfig(Section):
    requests: ComputeResources = ComputeResources(cpu="4", memory="16Gi")
    limits: ComputeResources = ComputeResources(cpu="8", memory="32Gi")
    shm_size: Quantity = Field("8Gi", description="Memory-backed /dev/shm for tensor sharing.")
    cache_size: Quantity = Field("20Gi", description="Writable cache emptyDir (compile caches, demo model).")
    tmp_size: Quantity = "1Gi"


class ScalingPolicy(Section):
    stabilization_window_seconds: int = Field(ge=0, le=3600)
    pods: int = Field(ge=1, description="Pods added or removed per period at most.")
    period_seconds: int = Field(ge=1, le=1800)


class AutoscalingConfig(Section):
    enabled: bool = True
    min_replicas: int = Field(2, ge=1)
    max_replicas: int = Field(10, ge=1)
    cpu_utilization: int = Field(70, ge=1, le=100, description="Target average CPU, percent of requests.")
    memory_utilization: int = Field(
        80, ge=1, le=100, description="Target average memory, percent of requests."
    )
    requests_waiting_per_pod: float = Field(
        4, gt=0, description="Target of the server's llm_requests_waiting per pod (via a metrics adapter)."
    )
    # A model takes minutes to load, so add fast but remove slowly.
    scale_up: ScalingPolicy = ScalingPolicy(stabilization_window_seconds=60, pods=2, period_seconds=60)
    scale_down: ScalingPolicy = ScalingPolicy(stabilization_window_seconds=600, pods=1, period_seconds=300)


# Server settings the stack may set. The rest are owned by the deployment: where it listens, where
# the model and the API key are mounted.
DEPLOYMENT_OWNED_SERVER_FIELDS = frozenset({"host", "port", "model_path", "api_key", "api_key_file"})

ServerSettings: type[Section] = create_model(  # type: ignore[call-overload]
    "ServerSettings",
    __base__=Section,
    **{
        name: (info.annotation, info)
        for name, info in ServerConfig.model_fields.items()
        if name not in DEPLOYMENT_OWNED_SERVER_FIELDS
    },
)
