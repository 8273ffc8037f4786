"""Keys of the cloud sections (`aws`, `alicloud`, `tencent`): region, the cluster to create or use,
the GPU node pool, the model bucket and the cloud's load balancer. Each cloud module reads only its own.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from infra.config.base import PinnedImage, Section

# GPU instance families each cloud's GPU node pool may use: a typo or a CPU family is caught here, not
# by a failed node pool half an hour into `pulumi up`.
AWS_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en")
ALICLOUD_GPU_FAMILIES = (
    "ecs.gn6i", "ecs.gn6v", "ecs.gn6e", "ecs.gn7", "ecs.gn7i", "ecs.gn7e", "ecs.gn8is", "ecs.gn8v",
    "ecs.ebmgn7e", "ecs.ebmgn8v",
)
TENCENT_GPU_FAMILIES = ("GN6S", "GN7", "GN7vw", "GN8", "GN10X", "GN10Xp", "GT4", "PNV4")


# GPUs per node of the instance types the example stacks and the README use. A type missing here needs
# `nodePool.gpusPerNode`, so that the pods-per-node arithmetic below never guesses.
GPUS_PER_INSTANCE: dict[str, int] = {
    **{f"g5.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    **{f"g6.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
    **{f"g6e.{size}": 1 for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g6e.12xlarge": 4, "g6e.24xlarge": 4, "g6e.48xlarge": 8,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
    "ecs.gn7i-c8g1.2xlarge": 1, "ecs.gn7i-c16g1.4xlarge": 1, "ecs.gn7i-c32g1.8xlarge": 1,
    "ecs.gn7i-c32g1.16xlarge": 2, "ecs.gn7i-c32g1.32xlarge": 4,
    "GN7.2XLARGE32": 1, "GN7.5XLARGE80": 1, "GN7.10XLARGE160": 2, "GN7.20XLARGE320": 4,
}


def _family_check(families: tuple[str, ...], separator: str) -> AfterValidator:
    """Validator: the instance type's family (text before `separator`) is one of `families`."""

    def check(instance_type: str) -> str:
        family = instance_type.split(separator, 1)[0]
        if family not in families:
            raise ValueError(
                f"{instance_type!r} is not of a known GPU instance type family ({family!r}); "
                f"allowed families: {', '.join(families)}"
            )
        return instance_type

    return AfterValidator(check)


AwsGpuInstanceType = Annotated[str, _family_check(AWS_GPU_FAMILIES, ".")]
AlicloudGpuInstanceType = Annotated[str, _family_check(ALICLOUD_GPU_FAMILIES, "-")]
TencentGpuInstanceType = Annotated[str, _family_check(TENCENT_GPU_FAMILIES, ".")]


class ExistingCluster(Section):
    """Use a cluster that already exists; its kubeconfig is the secret `kubeconfig` when given,
    otherwise it is read from the cloud."""

    name: str = Field(min_length=1, description="EKS cluster name; ACK or TKE cluster id.")


class AlicloudExistingCluster(ExistingCluster):
    # RRSA of an existing cluster: shown on its Basic Information page once RRSA is enabled.
    rrsa_oidc_provider_arn: str = Field(min_length=1)
    rrsa_oidc_issuer_url: str = Field(min_length=1)


class NodePoolConfig(Section):
    """The GPU node pool: tainted so that only the GPU workload lands on it."""

    instance_type: str
    min_size: int = Field(1, ge=0)
    max_size: int = Field(3, ge=1)
    desired_size: int = Field(1, ge=0)
    disk_size_gb: int = Field(200, ge=20)
    gpus_per_node: int | None = Field(
        None, ge=1, description="GPUs of one node; none: from the table of known instance types."
    )

    @property
    def gpus(self) -> int | None:
        return self.gpus_per_node or GPUS_PER_INSTANCE.get(self.instance_type)

    @model_validator(mode="after")
    def _sizes_in_order(self) -> NodePoolConfig:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"sizes out of order (minSize {self.min_size}, desiredSize {self.desired_size}, "
                f"maxSize {self.max_size}); allowed: minSize <= desiredSize <= maxSize"
            )
        return self


class AwsNodePool(NodePoolConfig):
    instance_type: AwsGpuInstanceType


class AlicloudNodePool(NodePoolConfig):
    instance_type: AlicloudGpuInstanceType


class TencentNodePool(NodePoolConfig):
    instance_type: TencentGpuInstanceType
    gpu_driver: dict[str, str] | None = Field(
        None, description="TKE's GPU driver for the pool, e.g. {name: NVIDIA-Linux-x86_64-535.161.08, "
        "version: 535.161.08}; none: the image's driver.",
    )


class SystemNodePoolConfig(Section):
    """Untainted nodes for cluster add-ons (DNS, CSI, load balancer controller)."""

    instance_type: str
    size: int = Field(2, ge=1)


class ClusterCreate(Section):
    version: str = "1.33"
    subnet_ids: list[str] = Field(
        min_length=1, description="Subnets (vSwitches on Alibaba Cloud) of the nodes."
    )
    node_pool: NodePoolConfig
    system_node_pool: SystemNodePoolConfig


class AwsClusterCreate(ClusterCreate):
    subnet_ids: list[str] = Field(min_length=2, description="Subnets in at least two availability zones.")
    node_pool: AwsNodePool
    system_node_pool: SystemNodePoolConfig = SystemNodePoolConfig(instance_type="m6i.large")
    api_public_access_cidrs: list[str] = Field(
        default_factory=list,
        description="CIDRs allowed to the public API endpoint; empty: private endpoint only.",
    )


class AlicloudClusterCreate(ClusterCreate):
    version: str | None = Field(None, description="ACK version, e.g. 1.33.1-aliyun.1; none: the latest.")
    node_pool: AlicloudNodePool
    system_node_pool: SystemNodePoolConfig = SystemNodePoolConfig(instance_type="ecs.g7.xlarge")
    cluster_spec: Literal["ack.pro.small", "ack.standard"] = "ack.pro.small"
    pod_vswitch_ids: list[str] = Field(
        default_factory=list,
        description="vSwitches Terway gives pod addresses from; empty: the nodes' (subnetIds).",
    )
    service_cidr: str = "172.21.0.0/20"
    api_public: bool = Field(False, description="Expose the API server on an internet-facing load balancer.")


class TencentClusterCreate(ClusterCreate):
    version: str = "1.32.2"
    vpc_id: str = Field(min_length=1)
    node_pool: TencentNodePool
    system_node_pool: SystemNodePoolConfig = SystemNodePoolConfig(instance_type="S5.LARGE8")
    cluster_cidr: str = Field("172.18.0.0/16", description="Pod CIDR of the global router network.")
    security_group_ids: list[str] = Field(min_length=1, description="Security groups of the nodes.")
    api_public_security_group_id: str | None = Field(
        None, description="Set: expose the API server on the internet, limited by this security group."
    )


class BucketConfig(Section):
    name: str | None = Field(
        None, description="Name of the model bucket to create; none: derived from the stack."
    )


class CloudSection(Section):
    """Keys every cloud shares. Exactly one of `existingCluster` and `cluster` must be set."""

    region: str = Field(min_length=1)
    existing_cluster: ExistingCluster | None = None
    cluster: ClusterCreate | None = None
    bucket: BucketConfig = BucketConfig()

    @model_validator(mode="after")
    def _one_cluster_source(self) -> CloudSection:
        if (self.existing_cluster is None) == (self.cluster is None):
            state = "both are set" if self.cluster else "neither is set"
            raise ValueError(
                f"{state}; allowed: exactly one of existingCluster (use a cluster) or cluster (create one)"
            )
        return self


class AwsConfig(CloudSection):
    cluster: AwsClusterCreate | None = None
    load_balancer_scheme: Literal["internal", "internet-facing"] = "internal"
    model_sync_image: PinnedImage = "public.ecr.aws/aws-cli/aws-cli:2.22.0"


class AlicloudConfig(CloudSection):
    existing_cluster: AlicloudExistingCluster | None = None
    cluster: AlicloudClusterCreate | None = None
    load_balancer_address_type: Literal["intranet", "internet"] = "intranet"
    load_balancer_vswitch_id: str | None = Field(None, description="vSwitch of an intranet load balancer.")
    model_sync_image: PinnedImage = Field(
        description="Image with ossutil 2 (it reads the RRSA credentials the pod identity webhook injects)."
    )


class TencentConfig(CloudSection):
    app_id: str = Field(
        pattern=r"^[0-9]{5,12}$", description="Account APPID: suffix of every COS bucket name."
    )
    cluster: TencentClusterCreate | None = None
    load_balancer_internal_subnet_id: str | None = Field(
        None, description="Set: internal CLB in that subnet."
    )
    model_sync_image: PinnedImage = "public.ecr.aws/aws-cli/aws-cli:2.22.0"


