"""The logging agent: a fluent-bit DaemonSet that tails the server's JSON log lines on each node,
adds Kubernetes metadata and ships them to the cloud target's log sink.

It runs in a namespace of its own: reading container logs needs hostPath mounts of the node's
/var/log, which Pod Security Admission forbids at every level but `privileged`, and the app's
namespace stays `restricted`. What it may do there is kept small: read-only /var/log, one writable
node directory for its read positions, no capabilities, and RBAC limited to pods of the app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pulumi
import pulumi_kubernetes as k8s

from infra.clouds.base import LogSink
from infra.components.namespace import pod_security_labels
from infra.components.naming import App, Component, child_opts
from infra.components.pod_access import grant_pod_read
from infra.components.pod_security import hardened_container_context
from infra.components.workload import CONTAINER_NAME, Placement, unpinned_digest_skips
from infra.config import LoggingConfig

COMPONENT = "logging"
CONFIG_DIR = "/fluent-bit/etc"
MAIN_CONFIG = "fluent-bit.conf"
PARSERS_CONFIG = "parsers.conf"
OUTPUT_CONFIG = "output.conf"
LOG_DIR = "/var/log"
HEALTH_PORT = 2020
HEALTH_PATH = "/api/v1/health"
TAG_PREFIX = "kube."
JSON_PARSER = "server_json"
# fluent-bit's own plugin name per sink kind, where the sink does not name it.
_PLUGIN_FOR_KIND = {"elasticsearch": "es"}
# Elasticsearch 8 has no mapping types, and dots in Kubernetes label keys would split into objects.
_ELASTICSEARCH_DEFAULTS = {"Suppress_Type_Name": "On", "Replace_Dots": "On", "Retry_Limit": "5"}


def section(name: str, entries: Mapping[str, str]) -> str:
    """One `[NAME]` section of fluent-bit's classic config format."""
    for key, value in entries.items():
        if "\n" in f"{key}{value}":
            raise ValueError(f"fluent-bit [{name}] entry {key!r} holds a line break")
    width = max(map(len, entries))
    return f"[{name}]\n" + "".join(f"    {key.ljust(width)}  {value}\n" for key, value in entries.items())


def state_dir(app: App) -> str:
    """Node directory for read positions, so a restarted agent neither loses nor repeats lines."""
    return f"/var/lib/{app.name}-log-agent"


def main_config(app: App) -> str:
    state = state_dir(app)
    return "\n".join([
        section("SERVICE", {
            "Flush": "5",
            "Daemon": "Off",
            "Log_Level": "info",
            "Parsers_File": PARSERS_CONFIG,
            "HTTP_Server": "On",
            "HTTP_Listen": "0.0.0.0",
            "HTTP_Port": str(HEALTH_PORT),
            "Health_Check": "On",
            "storage.path": f"{state}/buffer",
        }),
        section("INPUT", {
            "Name": "tail",
            "Tag": f"{TAG_PREFIX}*",
            # Kubelet names the files <pod>_<namespace>_<container>-<container id>.log.
            "Path": f"{LOG_DIR}/containers/*_{app.namespace}_{CONTAINER_NAME}-*.log",
            "multiline.parser": "cri",
            "DB": f"{state}/tail.db",
            "Mem_Buf_Limit": "32MB",
            "storage.type": "filesystem",
            "Skip_Long_Lines": "On",
            "Refresh_Interval": "10",
        }),
        # The server writes one JSON object per line: its fields become the record's fields.
        section("FILTER", {
            "Name": "parser",
            "Match": f"{TAG_PREFIX}*",
            "Key_Name": "log",
            "Parser": JSON_PARSER,
            "Reserve_Data": "On",
        }),
        section("FILTER", {
            "Name": "kubernetes",
            "Match": f"{TAG_PREFIX}*",
            "Kube_Tag_Prefix": f"{TAG_PREFIX}var.log.containers.",
            "Merge_Log": "Off",
            "Labels": "On",
            "Annotations": "Off",
        }),
        f"@INCLUDE {OUTPUT_CONFIG}\n",
    ])


def parsers_config() -> str:
    # The record keeps the container runtime's timestamp; the server's own `time` stays a field.
    return section("PARSER", {"Name": JSON_PARSER, "Format": "json"})


def output_config(sink_kind: str, outputs: Mapping[str, str]) -> str:
    entries = {"Match": f"{TAG_PREFIX}*"}
    if sink_kind == "elasticsearch":
        entries.update(_ELASTICSEARCH_DEFAULTS)
    entries.update(outputs)
    if "Name" not in entries:
        plugin = _PLUGIN_FOR_KIND.get(sink_kind)
        if plugin is None:
            raise ValueError(f"log sink {sink_kind!r} names no fluent-bit output plugin (its 'Name')")
        entries = {"Name": plugin, **entries}
    return section("OUTPUT", entries)


def _resolved_output(sink: LogSink) -> pulumi.Output[str]:
    values = {**sink.outputs, **sink.secret_outputs}
    return pulumi.Output.all(**values).apply(lambda resolved: output_config(sink.kind, resolved))


def _checkov_skips(reasons: Sequence[str]) -> dict[str, str]:
    return {f"checkov.io/skip{i}": reason for i, reason in enumerate(reasons, start=1)}


@dataclass(frozen=True)
class LoggingArgs:
    app: App
    config: LoggingConfig
    sink: LogSink
    namespace: str
    service_account: str
    placement: Placement  # where the server's pods may run, so the agent runs beside them


class LoggingAgent(Component):
    def __init__(self, name: str, args: LoggingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("llm-serving:logging:LoggingAgent", name, opts)
        app = args.app
        self.namespace = k8s.core.v1.Namespace(
            f"{args.namespace}-namespace",
            metadata=app.metadata(
                args.namespace,
                COMPONENT,
                namespaced=False,
                labels=pod_security_labels("privileged"),
                # Declared exception for the policy pack in policy/ (see policy/guardrails/exemptions.py).
                annotations={"llm-serving/skip-policy.namespaces-enforce-restricted":
                             "hostPath mounts of the node's /var/log need the privileged level"},
            ),
            opts=child_opts(self),
        )
        in_namespace = child_opts(self, depends_on=[self.namespace])
        agent = args.service_account
        service_account = k8s.core.v1.ServiceAccount(
            f"{agent}-serviceaccount",
            metadata=self._metadata(args, agent, annotations=args.sink.service_account_annotations),
            opts=in_namespace,
        )
        # The kubernetes filter reads the metadata of the app's pods, in the app's namespace only.
        grant_pod_read(self, app, agent, COMPONENT, agent, args.namespace)
        # Nothing connects to the agent (kubelet probes are exempt); what it sends to, the sink and the
        # API server, has addresses known only at run time, so egress stays open.
        k8s.networking.v1.NetworkPolicy(
            f"{agent}-networkpolicy",
            metadata=self._metadata(args, agent),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=app.selector(COMPONENT)),
                policy_types=["Ingress"],
            ),
            opts=in_namespace,
        )
        config_sources, config_objects = self._config_files(args, in_namespace)
        self.daemon_set = self._daemon_set(args, config_sources, [service_account, *config_objects])
        self.register_outputs({"namespace": self.namespace.metadata.name})

    @staticmethod
    def _metadata(
        args: LoggingArgs, name: str, annotations: Mapping[str, pulumi.Input[str]] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        """The app's metadata for an object in the agent's namespace."""
        return replace(args.app, namespace=args.namespace).metadata(name, COMPONENT, annotations=annotations)

    def _config_files(
        self, args: LoggingArgs, opts: pulumi.ResourceOptions
    ) -> tuple[list[k8s.core.v1.VolumeProjectionArgs], list[pulumi.Resource]]:
        """The config files, projected into one directory; the [OUTPUT] section goes to a Secret when
        the sink needs a credential in it."""
        name = f"{args.service_account}-config"
        output = _resolved_output(args.sink)
        files = {MAIN_CONFIG: main_config(args.app), PARSERS_CONFIG: parsers_config()}
        holds_secret = bool(args.sink.secret_outputs)
        if not holds_secret:
            files[OUTPUT_CONFIG] = output  # type: ignore[assignment]
        config_map = k8s.core.v1.ConfigMap(f"{name}-configmap", metadata=self._metadata(args, name),
                                           data=files, opts=opts)
        objects: list[pulumi.Resource] = [config_map]
        sources = [k8s.core.v1.VolumeProjectionArgs(
            config_map=k8s.core.v1.ConfigMapProjectionArgs(name=name)
        )]
        if holds_secret:
            secret_name = f"{args.service_account}-output"
            objects.append(k8s.core.v1.Secret(
                f"{secret_name}-secret", metadata=self._metadata(args, secret_name),
                string_data={OUTPUT_CONFIG: output}, opts=opts,
            ))
            sources.append(k8s.core.v1.VolumeProjectionArgs(
                secret=k8s.core.v1.SecretProjectionArgs(name=secret_name)
            ))
        return sources, objects

    def _daemon_set(
        self,
        args: LoggingArgs,
        config_sources: list[k8s.core.v1.VolumeProjectionArgs],
        depends_on: list[pulumi.Resource],
    ) -> k8s.apps.v1.DaemonSet:
        app, placement = args.app, args.placement
        skips = [
            *unpinned_digest_skips([args.config.image]).values(),
            "CKV_K8S_23=reads node log files owned by root; every capability is dropped and the root "
            "filesystem is read-only",
            "CKV_K8S_40=reads node log files owned by root (uid 0), which no high uid may read",
            "CKV_K8S_38=the kubernetes filter reads pod metadata from the API with this token",
        ]
        return k8s.apps.v1.DaemonSet(
            f"{args.service_account}-daemonset",
            metadata=self._metadata(args, args.service_account, annotations={
                **_checkov_skips(skips),
                # Declared exception for the policy pack in policy/ (see policy/guardrails/exemptions.py).
                "llm-serving/skip-policy.pods-run-as-non-root": "reads node log files owned by root (uid 0)",
            }),
            spec=k8s.apps.v1.DaemonSetSpecArgs(
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=app.selector(COMPONENT)),
                update_strategy=k8s.apps.v1.DaemonSetUpdateStrategyArgs(type="RollingUpdate"),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=app.labels(COMPONENT)),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=args.service_account,
                        automount_service_account_token=True,
                        node_selector=dict(placement.node_selector) or None,
                        tolerations=[k8s.core.v1.TolerationArgs(**t) for t in placement.tolerations] or None,
                        security_context=k8s.core.v1.PodSecurityContextArgs(
                            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
                        ),
                        containers=[_container(args)],
                        volumes=_volumes(app, config_sources),
                    ),
                ),
            ),
            opts=child_opts(self, depends_on=depends_on),
        )


def _container(args: LoggingArgs) -> k8s.core.v1.ContainerArgs:
    config = args.config
    health = k8s.core.v1.HTTPGetActionArgs(path=HEALTH_PATH, port="health")
    return k8s.core.v1.ContainerArgs(
        name="fluent-bit",
        image=config.image,
        image_pull_policy="Always",
        ports=[k8s.core.v1.ContainerPortArgs(name="health", container_port=HEALTH_PORT, protocol="TCP")],
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": config.requests.cpu, "memory": config.requests.memory},
            limits={"cpu": config.limits.cpu, "memory": config.limits.memory},
        ),
        liveness_probe=k8s.core.v1.ProbeArgs(http_get=health, period_seconds=30),
        readiness_probe=k8s.core.v1.ProbeArgs(http_get=health, period_seconds=10),
        # Node log files are owned by root; the policy exemption on the DaemonSet says so.
        security_context=hardened_container_context(run_as_user=0),
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONFIG_DIR, read_only=True),
            k8s.core.v1.VolumeMountArgs(name="logs", mount_path=LOG_DIR, read_only=True),
            k8s.core.v1.VolumeMountArgs(name="state", mount_path=state_dir(args.app)),
        ],
    )


def _volumes(
    app: App, config_sources: list[k8s.core.v1.VolumeProjectionArgs]
) -> list[k8s.core.v1.VolumeArgs]:
    def node_path(path: str, kind: str) -> k8s.core.v1.HostPathVolumeSourceArgs:
        return k8s.core.v1.HostPathVolumeSourceArgs(path=path, type=kind)

    return [
        k8s.core.v1.VolumeArgs(
            name="config", projected=k8s.core.v1.ProjectedVolumeSourceArgs(sources=config_sources)
        ),
        k8s.core.v1.VolumeArgs(name="logs", host_path=node_path(LOG_DIR, "Directory")),
        k8s.core.v1.VolumeArgs(name="state", host_path=node_path(state_dir(app), "DirectoryOrCreate")),
    ]
