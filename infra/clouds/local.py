"""The local target: any cluster the ambient kubeconfig points at (kind, k3d, minikube, on-prem).

It declares no cloud resources. GPU scheduling uses the labels and taint the NVIDIA GPU operator
and device plugin set, so a GPU node of a plain cluster works without extra configuration.
"""

from __future__ import annotations

from infra.clouds.base import CloudTarget, LogSink
from infra.config import StackConfig

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def build_target(config: StackConfig) -> CloudTarget:
    gpus = config.gpu.count > 0
    es = config.logging.elasticsearch
    return CloudTarget(
        kubernetes_provider=None,
        storage_class=None,
        service_type="ClusterIP",
        service_annotations={},
        node_selector={"nvidia.com/gpu.present": "true"} if gpus else {},
        tolerations=[GPU_TOLERATION] if gpus else [],
        model_sync=None,
        log_sink=LogSink(
            kind="elasticsearch",
            outputs={"Host": es.host, "Port": str(es.port), "Index": es.index},
        ),
    )
