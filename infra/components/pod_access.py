"""Namespaced RBAC: a Role in the app's namespace with the one rule an identity needs, and its
RoleBinding. The server reads its own settings; identities in other namespaces (Prometheus' pod
discovery, the logging agent's metadata lookups) read the app's pods."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, child_opts


def bind_role(
    parent: pulumi.Resource,
    app: App,
    name: str,
    component: str,
    rule: k8s.rbac.v1.PolicyRuleArgs,
    service_account: str,
    namespace: str,
) -> None:
    """A Role `name` allowing `rule`, bound to `service_account` of `namespace`."""
    role = k8s.rbac.v1.Role(
        f"{name}-role",
        metadata=app.metadata(name, component),
        rules=[rule],
        opts=child_opts(parent),
    )
    k8s.rbac.v1.RoleBinding(
        f"{name}-rolebinding",
        metadata=app.metadata(name, component),
        role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=service_account, namespace=namespace)],
        opts=child_opts(parent, depends_on=[role]),
    )


def grant_pod_read(
    parent: pulumi.Resource, app: App, name: str, component: str, service_account: str, namespace: str
) -> None:
    bind_role(
        parent, app, name, component,
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]),
        service_account, namespace,
    )
