"""Model storage: a PVC on the target's storage class, and the init container that fills it."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.clouds.base import ModelSync
from infra.components.naming import App, Component, child_opts
from infra.components.pod_security import restricted_container_context
from infra.config import MODEL_DIR, MODEL_MOUNT_PATH, adapter_dir

MODEL_VOLUME = "model"
SYNC_TMP_VOLUME = "sync-tmp"
SYNC_SECRET_VOLUME = "sync-credentials"


@dataclass(frozen=True)
class SyncSource:
    """One prefix of the bucket, the directory it lands in, and the file that proves it arrived."""

    prefix: str
    directory: str
    marker: str


def model_sources(model_prefix: str, adapters: Sequence[tuple[str, str]]) -> list[SyncSource]:
    """The base model and each LoRA adapter (name, prefix), as the server expects them on disk."""
    return [
        SyncSource(model_prefix.strip("/"), MODEL_DIR, "config.json"),
        *(
            SyncSource(prefix.strip("/"), adapter_dir(name), "adapter_config.json")
            for name, prefix in adapters
        ),
    ]


@dataclass(frozen=True)
class ModelStorageArgs:
    app: App
    size: str
    access_mode: str
    storage_class: str | None
    model_sync: ModelSync | None
    sources: Sequence[SyncSource] = ()  # with model_sync: what to copy


def sync_script(sync: ModelSync, sources: Sequence[SyncSource]) -> str:
    """Copy each source, then fail naming the bucket and prefix where nothing arrived: an empty or wrong
    prefix stops here, with its cause in the pod's status, instead of crash-looping the server."""
    lines = ["set -eu"]
    for source in sources:
        missing = (
            f"model sync: nothing usable at bucket {sync.bucket!r} prefix {source.prefix!r}: "
            f"{source.marker} did not arrive in {source.directory}; upload it there first (see the README)"
        )
        lines += [
            f"mkdir -p {shlex.quote(source.directory)}",
            shlex.join(sync.copy_command(source.prefix, source.directory)),
            f"if [ ! -s {shlex.quote(f'{source.directory}/{source.marker}')} ]; then "
            f"echo {shlex.quote(missing)} >&2; exit 1; fi",
        ]
    return "\n".join(lines)


def sync_init_container(sync: ModelSync, sources: Sequence[SyncSource]) -> k8s.core.v1.ContainerArgs:
    """Copies the weights from the bucket into the volume before the server starts."""
    return k8s.core.v1.ContainerArgs(
        name="model-sync",
        image=sync.image,
        image_pull_policy="Always",
        command=["/bin/sh", "-c", sync_script(sync, sources)],
        # The failure message above becomes the container's termination message (kubectl describe).
        termination_message_policy="FallbackToLogsOnError",
        # Tools that cache credentials or temp files under $HOME need a writable one.
        env=[k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp")]
        + [k8s.core.v1.EnvVarArgs(name=key, value=value) for key, value in sorted(sync.env.items())],
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "500m", "memory": "512Mi"},
            limits={"cpu": "2", "memory": "2Gi"},
        ),
        security_context=restricted_container_context(),
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name=MODEL_VOLUME, mount_path=MODEL_MOUNT_PATH),
            k8s.core.v1.VolumeMountArgs(name=SYNC_TMP_VOLUME, mount_path="/tmp"),
        ]
        + (
            [k8s.core.v1.VolumeMountArgs(
                name=SYNC_SECRET_VOLUME, mount_path=ModelSync.SECRET_FILES_DIR, read_only=True
            )]
            if sync.secret_files
            else []
        ),
    )


class ModelStorage(Component):
    """The model volume, and what the workload takes from it: `volumes`, `init_containers`, `server_mounts`.

    Weights synced from a bucket go into a volume of each pod's own (a generic ephemeral volume on the
    target's storage class), so that every replica the autoscaler adds, on any node, fills its own copy:
    a single block-storage claim attaches to one node only. A volume filled otherwise is one shared claim.
    """

    def __init__(self, name: str, args: ModelStorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:storage:ModelStorage", name, opts)
        app = args.app
        claim_spec = k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=[args.access_mode],
            storage_class_name=args.storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": args.size}),
        )
        self.server_mounts = [
            k8s.core.v1.VolumeMountArgs(name=MODEL_VOLUME, mount_path=MODEL_MOUNT_PATH, read_only=True)
        ]
        self.init_containers: list[k8s.core.v1.ContainerArgs] = []
        if args.model_sync is None:
            self.volumes = [self._shared_claim_volume(app, claim_spec)]
        else:
            self.volumes = [self._per_pod_volume(app, claim_spec), k8s.core.v1.VolumeArgs(
                name=SYNC_TMP_VOLUME, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="1Gi")
            )]
            self.init_containers.append(sync_init_container(args.model_sync, args.sources))
            if args.model_sync.secret_files:
                self.volumes.append(self._credentials_volume(app, args.model_sync))
        self.register_outputs({})

    def _shared_claim_volume(
        self, app: App, spec: k8s.core.v1.PersistentVolumeClaimSpecArgs
    ) -> k8s.core.v1.VolumeArgs:
        k8s.core.v1.PersistentVolumeClaim(
            f"{app.model_claim}-persistentvolumeclaim",
            # On WaitForFirstConsumer storage classes a claim binds only once its pod is scheduled, so
            # waiting for it to bind before the Deployment exists would never end.
            metadata=app.metadata(
                app.model_claim, "model-storage", annotations={"pulumi.com/skipAwait": "true"}
            ),
            spec=spec,
            opts=child_opts(self),
        )
        return k8s.core.v1.VolumeArgs(
            name=MODEL_VOLUME,
            persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(claim_name=app.model_claim),
        )

    @staticmethod
    def _per_pod_volume(app: App, spec: k8s.core.v1.PersistentVolumeClaimSpecArgs) -> k8s.core.v1.VolumeArgs:
        return k8s.core.v1.VolumeArgs(
            name=MODEL_VOLUME,
            ephemeral=k8s.core.v1.EphemeralVolumeSourceArgs(
                volume_claim_template=k8s.core.v1.PersistentVolumeClaimTemplateArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=app.labels("model-storage")),
                    spec=spec,
                )
            ),
        )

    def _credentials_volume(self, app: App, sync: ModelSync) -> k8s.core.v1.VolumeArgs:
        """A cloud with no workload identity hands a key: it lives in a Secret, mounted read-only."""
        name = f"{app.name}-model-sync-credentials"
        k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=app.metadata(name, "model-storage"),
            type="Opaque",
            string_data={file: pulumi.Output.secret(content) for file, content in sync.secret_files.items()},
            opts=child_opts(self),
        )
        return k8s.core.v1.VolumeArgs(
            name=SYNC_SECRET_VOLUME,
            secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=name, default_mode=0o400),
        )
