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


class LoraAdapter(Section):
    """A LoRA adapter synced from the bucket beside the base model and served under its own model id."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="Model id clients ask for.")
    bucket_prefix: str = Field(min_length=1, description="Path of the adapter inside the model bucket.")


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
        1800, ge=60, le=86400,
        description="Startup budget: how long a pod may take to load the model, compile and capture CUDA "
        "graphs before it is ready (the startupProbe allows this long).",
    )
    lora_adapters: list[LoraAdapter] = Field(
        default_factory=list,
        description="LoRA adapters synced with the base model (model.source bucket); the server gets them "
        "as LLM_SERVING_LORA_MODULES.",
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


class RolloutConfig(Section):
    """How a rollout replaces pods. Unset, it depends on the pods: a GPU pod replaces an old one in place
    (maxSurge 0, maxUnavailable 1), because a surge pod needs a free GPU node that a full pool does not
    have and the rollout would wait forever; a CPU pod surges (maxSurge 1, maxUnavailable 0)."""

    max_surge: int | None = Field(None, ge=0, description="Extra pods during a rollout.")
    max_unavailable: int | None = Field(None, ge=0, description="Pods missing during a rollout.")
    pre_stop_seconds: int = Field(
        10, ge=0, le=120,
        description="How long a stopping pod keeps serving before it drains, so that every proxy has "
        "dropped its endpoint first (no 503s on scale-down).",
    )

    def resolved(self, gpus: bool) -> tuple[int, int]:
        """(maxSurge, maxUnavailable)."""
        surge, unavailable = (0, 1) if gpus else (1, 0)
        return (
            surge if self.max_surge is None else self.max_surge,
            unavailable if self.max_unavailable is None else self.max_unavailable,
        )


# Server settings the stack may set. The rest are owned by the deployment: where it listens, where
# the model and the API key are mounted.
# `tensor_parallel_size` follows gpu.count and `lora_modules` follows model.loraAdapters.
DEPLOYMENT_OWNED_SERVER_FIELDS = frozenset({
    "host", "port", "model_path", "api_key", "api_key_file", "tensor_parallel_size", "lora_modules",
})

ServerSettings: type[Section] = create_model(  # type: ignore[call-overload]
    "ServerSettings",
    __base__=Section,
    **{
        name: (info.annotation, info)
        for name, info in ServerConfig.model_fields.items()
        if name not in DEPLOYMENT_OWNED_SERVER_FIELDS
    },
)
