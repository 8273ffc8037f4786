"""What the cloud resources and look-ups the targets read would return after `pulumi up`, for the
offline render's mock runtime: endpoints, issuers, ARNs and generated keys that are not inputs.

The values are plausible in shape (an https issuer, a kubeconfig, an ARN) and obviously fake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pulumi.runtime.mocks import MockCallArgs, MockResourceArgs

FAKE_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCm1vY2sKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="
FAKE_SERVER = "https://cluster.invalid"


def fake_kubeconfig(cluster: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": cluster,
            "clusters": [
                {"name": cluster, "cluster": {"server": FAKE_SERVER, "certificate-authority-data": FAKE_CA}}
            ],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": cluster}}],
            "users": [{"name": cluster, "user": {"token": "mock"}}],
        }
    )


def _eks_identity(name: str) -> list[dict[str, Any]]:
    return [{"oidcs": [{"issuer": f"https://oidc.eks.mock-region.amazonaws.com/id/{name.upper()}"}]}]


def _aws_arn(args: MockResourceArgs) -> dict[str, Any]:
    return {"arn": f"arn:aws:mock:::{args.name}"}


def _aws_named(args: MockResourceArgs) -> dict[str, Any]:
    return {**_aws_arn(args), "name": args.inputs.get("name", args.name)}


def _eks_cluster(args: MockResourceArgs) -> dict[str, Any]:
    return {
        **_aws_named(args),
        "vpcConfig": {**args.inputs.get("vpcConfig", {}), "vpcId": "vpc-0mock"},
        "endpoint": FAKE_SERVER,
        "certificateAuthority": {"data": FAKE_CA},
        "identities": _eks_identity(args.name),
    }


def _ack_cluster(args: MockResourceArgs) -> dict[str, Any]:
    return {
        "rrsaMetadata": {
            "enabled": True,
            "ramOidcProviderArn": f"acs:ram::1234567890:oidc-provider/ack-rrsa-{args.name}",
            "ramOidcProviderName": f"ack-rrsa-{args.name}",
            "rrsaOidcIssuerUrl": f"https://oidc-ack.mock-region.aliyuncs.com/{args.name}",
        }
    }


MOCK_OUTPUTS: dict[str, Callable[[MockResourceArgs], dict[str, Any]]] = {
    "aws:eks/cluster:Cluster": _eks_cluster,
    "aws:iam/role:Role": _aws_named,
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": _aws_arn,
    "aws:kms/key:Key": _aws_arn,
    "aws:s3/bucket:Bucket": _aws_arn,
    "aws:cloudwatch/logGroup:LogGroup": _aws_arn,
    "alicloud:cs/managedKubernetes:ManagedKubernetes": _ack_cluster,
    "alicloud:ram/accessKey:AccessKey": lambda args: {"secret": "mock-access-key-secret"},
    "tencentcloud:Kubernetes/clusterEndpoint:ClusterEndpoint": lambda args: {
        "kubeConfig": fake_kubeconfig(args.name),
        "kubeConfigIntranet": fake_kubeconfig(args.name),
    },
    "tencentcloud:Cam/user:User": lambda args: {"uin": 100000000001},
    "tencentcloud:Cam/accessKey:AccessKey": lambda args: {
        "accessKey": "AKIDmock",
        "secretAccessKey": "mock-secret-access-key",
    },
}

MOCK_CALLS: dict[str, Callable[[MockCallArgs], dict[str, Any]]] = {
    "aws:eks/getCluster:getCluster": lambda args: {
        "name": args.args["name"],
        "endpoint": FAKE_SERVER,
        "certificateAuthorities": [{"data": FAKE_CA}],
        "identities": _eks_identity(args.args["name"]),
        "vpcConfig": {"vpcId": "vpc-0mock"},
    },
    "aws:iam/getOpenIdConnectProvider:getOpenIdConnectProvider": lambda args: {
        "arn": f"arn:aws:iam::123456789012:oidc-provider/{args.args['url'].removeprefix('https://')}",
        "url": args.args["url"],
    },
    "alicloud:cs/getClusterCredential:getClusterCredential": lambda args: {
        "clusterId": args.args["clusterId"],
        "kubeConfig": fake_kubeconfig(args.args["clusterId"]),
    },
    "tencentcloud:Kubernetes/getClusters:getClusters": lambda args: {
        "lists": [
            {"clusterId": args.args["clusterId"], "kubeConfig": fake_kubeconfig(args.args["clusterId"])}
        ]
    },
}
