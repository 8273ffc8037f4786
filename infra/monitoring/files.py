"""Write the generated monitoring files for a Prometheus and Grafana run outside Kubernetes.

`python -m infra monitoring-files --out DIR --target HOST:PORT` lays out:

    DIR/prometheus.yml                      scrape config reading the rules below
    DIR/rules/<job>.rules.yml               recording and alerting rules
    DIR/dashboards/<job>.json               the Grafana dashboard
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.config import AlertThresholds
from infra.monitoring.dashboard import dashboard
from infra.monitoring.rules import rule_file
from infra.monitoring.scrape import prometheus_config, static_scrape
from infra.monitoring.service import MonitoredService

RULES_DIR = "rules"
DASHBOARDS_DIR = "dashboards"


@dataclass(frozen=True)
class MonitoringFiles:
    prometheus_config: Path
    rule_file: Path
    dashboard: Path


def dump_yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=120)


def write_monitoring_files(
    out_dir: Path,
    service: MonitoredService,
    targets: Sequence[str],
    interval: str = "15s",
) -> MonitoringFiles:
    files = MonitoringFiles(
        prometheus_config=out_dir / "prometheus.yml",
        rule_file=out_dir / RULES_DIR / f"{service.job}.rules.yml",
        dashboard=out_dir / DASHBOARDS_DIR / f"{service.job}.json",
    )
    for path in (files.rule_file, files.dashboard):
        path.parent.mkdir(parents=True, exist_ok=True)
    # Outside a stack there is no stack config: the thresholds are its defaults.
    files.rule_file.write_text(dump_yaml(rule_file(service, AlertThresholds())))
    files.dashboard.write_text(json.dumps(dashboard(service), indent=2) + "\n")
    # Prometheus resolves rule_files against the config file's directory.
    config = prometheus_config([static_scrape(service, targets, interval)], [f"{RULES_DIR}/*.yml"], interval)
    files.prometheus_config.write_text(dump_yaml(config))
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m infra monitoring-files`."""
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument(
        "--target", action="append", required=True, help="server HOST:PORT to scrape; repeat for more"
    )
    parser.add_argument("--job", default="llm-serving", help="Prometheus job name of the server")
    parser.add_argument("--namespace", default="local", help="value of the namespace label on its series")
    parser.add_argument("--interval", default="15s", help="scrape and rule evaluation interval")


def command(args: argparse.Namespace) -> int:
    service = MonitoredService(job=args.job, namespace=args.namespace, deployment=args.job)
    files = write_monitoring_files(args.out, service, args.target, interval=args.interval)
    for path in (files.prometheus_config, files.rule_file, files.dashboard):
        print(path)
    return 0
