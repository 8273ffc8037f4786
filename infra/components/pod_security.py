"""The restricted security context every pod and container of the app runs with."""

from __future__ import annotations

import pulumi_kubernetes as k8s

# Above 10000 so that the uid never matches a user of the node; the image runs as the same uid.
RUN_AS_USER = 10001
RUN_AS_GROUP = 10001


def restricted_pod_context() -> k8s.core.v1.PodSecurityContextArgs:
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_GROUP,
        fs_group=RUN_AS_GROUP,
        # Large model volumes: re-own files only when the volume root is not ours yet.
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def restricted_container_context() -> k8s.core.v1.SecurityContextArgs:
    return hardened_container_context(run_as_user=RUN_AS_USER, run_as_group=RUN_AS_GROUP)


def hardened_container_context(
    run_as_user: int, run_as_group: int | None = None
) -> k8s.core.v1.SecurityContextArgs:
    """No privileges, no capabilities, a read-only root filesystem and the runtime's seccomp profile.
    `runAsNonRoot` follows the uid: uid 0 is for the few containers that must run as root (and say why)."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=run_as_user != 0,
        run_as_user=run_as_user,
        run_as_group=run_as_group,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )
