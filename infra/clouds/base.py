"""The seam between a cloud and the Kubernetes components: what a cloud target hands over.

Each module in `infra.clouds` exposes `build_target(config: StackConfig) -> CloudTarget`. The managed
clouds (aws, alicloud, tencent) have one declared shape, `infra.clouds.common.ManagedCloud`: the same
functions with the same signatures (create or use a cluster, model bucket, model sync, log sink, load
balancer annotations, platform pieces), driven in the same order by `common.build_target`. What the
target returns are the few facts the Kubernetes components need; nothing below this seam knows which
cloud it runs in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s


@dataclass(frozen=True)
class ModelSync:
    """How an init container fills the model volume from the bucket before the server starts."""

    image: str  # pinned tag or digest, never latest
    bucket: str  # the bucket's name, for the message when a prefix holds nothing
    # The copy of one prefix of the bucket into a directory: (prefix, directory) -> argv, e.g.
    # ["aws", "s3", "sync", "s3://bucket/prefix", "/models/model"].
    copy_command: Callable[[str, str], Sequence[str]]
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    service_account_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # e.g. IRSA
    service_account_labels: Mapping[str, str] = field(default_factory=dict)  # e.g. pod identity labels
    # Where the download goes, for the NetworkPolicy; empty means anywhere on port 443.
    egress_cidrs: Sequence[str] = ()
    # Credentials the cloud can only give as a key (no workload identity): file name -> content. The
    # component keeps them in a Secret mounted read-only at SECRET_FILES_DIR, never in env or plain text.
    secret_files: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)

    SECRET_FILES_DIR = "/var/run/secrets/model-sync"


@dataclass(frozen=True)
class LogSink:
    """Where the logging agent ships the server's JSON logs."""

    kind: str  # "elasticsearch" | "cloudwatch" | "sls" | "cls"
    outputs: Mapping[str, pulumi.Input[str]]  # output-plugin parameters (fluent-bit [OUTPUT] keys)
    service_account_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # Output parameters that are credentials (a sink reachable only with a key): the component keeps
    # the [OUTPUT] section that holds them in a Secret, never in a ConfigMap.
    secret_outputs: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChartRelease:
    """A Helm release of a chart of `infra.charts.CHARTS`, with values that may hold Outputs (an IAM
    role's ARN); the platform layer installs its own and the ones a cloud adds (its load balancer
    controller, its node autoscaler)."""

    chart: str  # a key of infra.charts.CHARTS
    values: Mapping[str, Any]
    # Installed before every other release (a controller whose webhook admits Services and pods).
    before_others: bool = False


@dataclass(frozen=True)
class CloudPlatform:
    """What the cloud adds to the platform layer of a cluster."""

    releases: Sequence[ChartRelease] = ()
    # The cloud installs no GPU device plugin on its GPU nodes (EKS, TKE): the platform layer must.
    needs_device_plugin: bool = False
    # Annotations of the public load balancer in front of the gateway's proxies.
    load_balancer_annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudTarget:
    kubernetes_provider: k8s.Provider | None  # from the cluster's kubeconfig; None: the ambient kubeconfig
    storage_class: str | None  # for the model PVC; None: the cluster default
    service_type: str  # "ClusterIP" or "LoadBalancer"
    service_annotations: Mapping[str, str]
    node_selector: Mapping[str, str]  # GPU node labels the workload selects (empty on CPU)
    tolerations: Sequence[Mapping[str, str]]  # {"key", "operator", "value"?, "effect"} of the GPU taint
    model_sync: ModelSync | None  # None: no bucket; the volume is filled otherwise (or the demo model)
    log_sink: LogSink
    outputs: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # extra stack outputs
    # Labels the app's Namespace must carry for the cloud's identity webhook (e.g. ACK RRSA injection).
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    # Whether this stack created the cluster: then the platform layer installs what the stack runs on.
    cluster_created: bool = False
    platform: CloudPlatform = CloudPlatform()
