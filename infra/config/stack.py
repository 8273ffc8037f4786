"""StackConfig: every key a `Pulumi.<stack>.yaml` may hold under `llm-serving:`, one section per concern,
and the secret keys that must never be written in plain text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
from pydantic import Field, PrivateAttr

from infra.config.base import DnsLabel, PinnedImage, Section, adapter_dir
from infra.config.clouds import AlicloudConfig, AwsConfig, TencentConfig
from infra.config.namespace import LimitRangeConfig, QuotaConfig
from infra.config.observability import LoggingConfig, MonitoringConfig
from infra.config.platform import PlatformConfig
from infra.config.traffic import IngressConfig, NetworkConfig
from infra.config.workload import (
    AutoscalingConfig,
    GpuConfig,
    ModelConfig,
    RegistryConfig,
    ResourcesConfig,
    RolloutConfig,
    ServerSettings,
)

SECRET_ENV_PREFIX = "LLM_SERVING_SECRET_"


@dataclass(frozen=True)
class SecretKey:
    description: str
    required: bool = False


# Config keys that must be Pulumi secrets (`pulumi config set --secret <key>`).
SECRET_KEYS: dict[str, SecretKey] = {
    "apiKey": SecretKey("bearer token clients send to the API", required=True),
    "registryPassword": SecretKey("password of the private image registry (with `registry`)"),
    "kubeconfig": SecretKey("kubeconfig of an existing cluster"),
    "grafanaAdminPassword": SecretKey(
        "Grafana's admin password (platform Grafana); unset, the chart generates a random one"
    ),
}


@dataclass(frozen=True)
class StackSecrets:
    """Secret config values, as Pulumi secret Outputs: they never appear in plain text."""

    values: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)

    def get(self, key: str) -> pulumi.Output[str] | None:
        return self.values.get(key)


class StackConfig(Section):
    cloud: Literal["local", "aws", "alicloud", "tencent"] = "local"
    name: DnsLabel = Field("llm-serving", description="App name: prefix of every object name.")
    namespace: DnsLabel = "llm-serving"
    image: PinnedImage
    # Always: a tag can be pushed again, and a pull of an unchanged image only checks its manifest.
    image_pull_policy: Literal["IfNotPresent", "Always"] = "Always"
    registry: RegistryConfig | None = None
    model: ModelConfig = ModelConfig()
    gpu: GpuConfig = GpuConfig()
    resources: ResourcesConfig = ResourcesConfig()
    replicas: int = Field(2, ge=1, description="Pods when autoscaling is off.")
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    rollout: RolloutConfig = RolloutConfig()
    ingress: IngressConfig = IngressConfig()
    network: NetworkConfig = NetworkConfig()
    quota: QuotaConfig = QuotaConfig()
    limit_range: LimitRangeConfig = LimitRangeConfig()
    server: ServerSettings = ServerSettings()  # type: ignore[valid-type]
    monitoring: MonitoringConfig = MonitoringConfig()
    logging: LoggingConfig = LoggingConfig()
    platform: PlatformConfig = PlatformConfig()
    aws: AwsConfig | None = None
    alicloud: AlicloudConfig | None = None
    tencent: TencentConfig | None = None

    _stack: str = PrivateAttr("")
    _secrets: StackSecrets = PrivateAttr(default_factory=StackSecrets)

    @property
    def stack(self) -> str:
        return self._stack

    @property
    def secrets(self) -> StackSecrets:
        return self._secrets

    @property
    def api_key(self) -> pulumi.Output[str]:
        return self._secrets.values["apiKey"]

    @property
    def derived_server_settings(self) -> dict[str, Any]:
        """Server fields that follow from other keys: one replica shards over all of its pod's GPUs; each
        LoRA adapter is served from where the model sync puts it."""
        derived: dict[str, Any] = {}
        if self.gpu.count > 1:
            derived["tensor_parallel_size"] = self.gpu.count
        if self.model.lora_adapters:
            derived["lora_modules"] = [f"{a.name}={adapter_dir(a.name)}" for a in self.model.lora_adapters]
        return derived

    @property
    def creates_cluster(self) -> bool:
        section = getattr(self, self.cloud, None) if self.cloud != "local" else None
        return getattr(section, "cluster", None) is not None

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling.enabled else self.replicas

    @property
    def rollout_strategy(self) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) of the Deployment."""
        return self.rollout.resolved(gpus=self.gpu.count > 0)

    @property
    def max_pods(self) -> int:
        """Pods of the workload at most: the autoscaling ceiling (or replicas) plus the rollout's surge."""
        return self.max_replicas + self.rollout_strategy[0]


def secret_env_name(key: str) -> str:
    """Where the offline render takes a secret from: apiKey -> LLM_SERVING_SECRET_API_KEY."""
    return SECRET_ENV_PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()

