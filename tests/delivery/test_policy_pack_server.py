"""The pack as the Pulumi CLI runs it: `python policy` serves the analyzer over gRPC, and the engine
sends it each resource's inputs as a protobuf Struct."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from policy.guardrails import POLICIES
from tests.delivery.conftest import REPO_ROOT, Manifest, first_of_kind, pulumi_type

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    process = subprocess.Popen(
        [sys.executable, "policy"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The pack's first line on stdout is the port it listens on, as the engine expects.
        port = int(process.stdout.readline())  # type: ignore[union-attr]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.terminate()
        process.wait(timeout=30)


def analyze(stub: analyzer_pb2_grpc.AnalyzerStub, manifest: Manifest) -> list[str]:
    properties = struct_pb2.Struct()
    properties.update(manifest)
    resource_type = pulumi_type(manifest)
    name = manifest["metadata"]["name"]
    response = stub.Analyze(analyzer_pb2.AnalyzeRequest(
        type=resource_type, properties=properties, name=name,
        urn=f"urn:pulumi:test::llm-serving::{resource_type}::{name}",
    ))
    return [diagnostic.policyName for diagnostic in response.diagnostics]


def test_pack_serves_every_policy_as_mandatory(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())

    assert {(p.name, p.enforcementLevel) for p in info.policies} == {
        (policy.name, analyzer_pb2.MANDATORY) for policy in POLICIES
    }


def test_stack_deployment_passes_through_the_engine_wire_format(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, dev_objects: list[Manifest]
) -> None:
    # Struct numbers are floats: a uid of 10001 arrives as 10001.0 and must still pass.
    assert analyze(analyzer, first_of_kind(dev_objects, "Deployment")) == []


def test_override_is_reported_by_the_running_pack(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, dev_objects: list[Manifest]
) -> None:
    deployment = copy.deepcopy(first_of_kind(dev_objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/llm-serving/inference:latest"

    assert analyze(analyzer, deployment) == ["images-are-pinned"]
