"""The stack config, one module per concern; everything the program and the tests import is here.

Keys are camelCase in the stack file (`llm-serving:autoscaling: {minReplicas: 2}`) and snake_case in
Python. `python -m infra keys` lists every key with its type, default and description.
"""

from infra.config.base import (
    ADAPTERS_DIR,
    MODEL_DIR,
    MODEL_MOUNT_PATH,
    PROJECT,
    SERVER_PORT,
    ComputeResources,
    DnsLabel,
    PinnedImage,
    Section,
    adapter_dir,
)
from infra.config.clouds import (
    AlicloudClusterCreate,
    AlicloudConfig,
    AwsClusterCreate,
    AwsConfig,
    CloudSection,
    NodePoolConfig,
    TencentClusterCreate,
    TencentConfig,
)
from infra.config.loading import ConfigError, load_stack_config, stack_file
from infra.config.namespace import LimitRangeConfig, QuotaConfig
from infra.config.observability import AlertThresholds, LoggingConfig, MonitoringConfig
from infra.config.stack import SECRET_KEYS, StackConfig, StackSecrets, secret_env_name
from infra.config.traffic import IngressConfig, NetworkConfig, TlsConfig
from infra.config.workload import (
    AutoscalingConfig,
    GpuConfig,
    ModelConfig,
    RegistryConfig,
    ResourcesConfig,
    ScalingPolicy,
    ServerSettings,
)

__all__ = [
    "ADAPTERS_DIR", "MODEL_DIR", "MODEL_MOUNT_PATH", "PROJECT", "SECRET_KEYS", "SERVER_PORT",
    "AlertThresholds", "AlicloudClusterCreate", "AlicloudConfig", "AutoscalingConfig", "AwsClusterCreate",
    "AwsConfig", "CloudSection", "ComputeResources", "ConfigError", "DnsLabel", "GpuConfig", "IngressConfig",
    "LimitRangeConfig", "LoggingConfig", "ModelConfig", "MonitoringConfig", "NetworkConfig", "NodePoolConfig",
    "PinnedImage", "QuotaConfig", "RegistryConfig", "ResourcesConfig", "ScalingPolicy", "Section",
    "ServerSettings", "StackConfig", "StackSecrets", "TencentClusterCreate", "TencentConfig", "TlsConfig",
    "adapter_dir", "load_stack_config", "secret_env_name", "stack_file",
]
