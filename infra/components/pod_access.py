"""Read access to the app's pods for an identity in another namespace (Prometheus' pod discovery, the
logging agent's metadata lookups): a Role in the app's namespace and its RoleBinding."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.components.naming import App, child_opts


def grant_pod_read(
    parent: pulumi.Resource, app: App, name: str, component: str, service_account: str, namespace: str
) -> None:
    role = k8s.rbac.v1.Role(
        f"{name}-role",
        metadata=app.metadata(name, component),
        rules=[k8s.rbac.v1.PolicyRuleArgs(
            api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"]
        )],
        opts=child_opts(parent),
    )
    k8s.rbac.v1.RoleBinding(
        f"{name}-rolebinding",
        metadata=app.metadata(name, component),
        role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
        subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=service_account, namespace=namespace)],
        opts=child_opts(parent, depends_on=[role]),
    )
