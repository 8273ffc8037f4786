"""Command line of `python -m infra`: offline tools around the Pulumi program."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.config import ConfigError
from infra.monitoring import files as monitoring_files


def _render(args: argparse.Namespace) -> int:
    from infra.program import run
    from infra.render import StackFileError, render

    try:
        mocks = render(args.stack, args.out, args.project_dir, run)
    except (ConfigError, StackFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kubernetes = len(mocks.kubernetes_objects())
    print(
        f"rendered stack {args.stack}: {kubernetes} Kubernetes objects, "
        f"{len(mocks.cloud_resources())} other resources -> {args.out}"
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
    from infra.config.keys import keys_table

    try:
        print(keys_table())
    except BrokenPipeError:  # `python -m infra keys | head`: the reader has all it wanted
        sys.stderr.close()
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m infra", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    render = commands.add_parser(
        "render", help="write a stack's Kubernetes manifests and cloud resource plan, offline"
    )
    render.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    render.add_argument("--out", required=True, type=Path, help="directory to write (replaced as a whole)")
    render.add_argument("--project-dir", type=Path, default=Path.cwd(), help="directory of Pulumi.yaml")
    render.set_defaults(handler=_render)
    keys = commands.add_parser(
        "keys", help="list every stack key (as written in a stack file) with its type, default and meaning"
    )
    keys.set_defaults(handler=_keys)
    monitoring = commands.add_parser(
        "monitoring-files", help="write Prometheus config, rules and the Grafana dashboard for a local stack"
    )
    monitoring_files.add_arguments(monitoring)
    monitoring.set_defaults(handler=monitoring_files.command)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.handler(args))
