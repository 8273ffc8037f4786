"""Prometheus rules, the Grafana dashboard and scrape configs, generated from the metric catalog.

Pure functions returning plain data (no Pulumi), so that the Kubernetes components, the local
compose stack and the tests all use the same generated queries.
"""
