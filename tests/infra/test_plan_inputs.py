"""Every input of every non-Kubernetes resource the stacks declare (cloud resources, providers, Helm
releases) is an input the installed provider SDK defines, at every level of nesting: a misspelt or
removed argument fails here, not half-way through `pulumi up`."""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

import pytest

from infra.render import Recorded
from tests.infra.cloud_stacks import run_stack, stack_values, with_changes
from tests.infra.conftest import STACKS

PACKAGES = {
    "aws": "pulumi_aws",
    "alicloud": "pulumi_alicloud",
    "tencentcloud": "tencentcloud_iac_pulumi",
    "kubernetes": "pulumi_kubernetes",
}
ARGS_TYPE = re.compile(r"ForwardRef\('(\w+Args)'\)")


def args_class(token: str) -> tuple[type, ModuleType]:
    """The SDK's `<Resource>Args` class of a type token, and the module its nested types live in."""
    package, module, name = token.split(":")
    if package == "pulumi" and module == "providers":
        sdk = importlib.import_module(PACKAGES[name])
        return sdk.ProviderArgs, sdk
    path = module.split("/")[0].replace("helm.sh", "helm").lower()
    if package == "kubernetes" and path == "helm":
        path = "helm.v3"
    sdk_module = importlib.import_module(f"{PACKAGES[package]}.{path}")
    # Where a nested type already took `<Resource>Args`, the SDK names the resource's own `...InitArgs`.
    cls = getattr(sdk_module, f"{name}InitArgs", None) or getattr(sdk_module, f"{name}Args")
    return cls, sdk_module


def wire_names(cls: type) -> dict[str, property]:
    """The input names of an Args class as they travel on the wire (camelCase), with their getters."""
    return {
        getattr(prop.fget, "_pulumi_name", attr): prop
        for attr, prop in vars(cls).items()
        if isinstance(prop, property)
    }


def unknown_inputs(inputs: dict[str, Any], cls: type, module: ModuleType, where: str) -> list[str]:
    known = wire_names(cls)
    problems = []
    for key, value in inputs.items():
        if key.startswith("__"):
            continue
        if key not in known:
            problems.append(f"{where}.{key}")
            continue
        nested = ARGS_TYPE.findall(str(known[key].fget.__annotations__.get("return", "")))
        nested_cls = getattr(module, nested[0], None) if nested else None
        if nested_cls is None:
            continue  # a scalar, or a free-form map (Helm values, tags)
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, dict):
                problems += unknown_inputs(item, nested_cls, module, f"{where}.{key}[{index}]")
    return problems


def plan(stack: str, changes: dict[str, Any] | None = None) -> list[Recorded]:
    return run_stack(stack, with_changes(stack_values(stack), changes or {})).cloud_resources()


@pytest.mark.parametrize("stack", [s for s in STACKS if s != "dev"])
def test_every_plan_input_is_an_sdk_input(stack: str) -> None:
    resources = plan(stack)
    assert resources
    problems = []
    for resource in resources:
        cls, module = args_class(resource.type)
        problems += unknown_inputs(resource.inputs, cls, module, f"{resource.type} {resource.name}")
    assert problems == []


def test_the_walk_catches_a_misspelt_input() -> None:
    cls, module = args_class("aws:eks/nodeGroup:NodeGroup")
    inputs = {"clusterName": "c", "scalingConfig": {"minSize": 1, "maxSise": 2}, "amiTyp": "x"}
    assert unknown_inputs(inputs, cls, module, "ng") == ["ng.scalingConfig[0].maxSise", "ng.amiTyp"]
