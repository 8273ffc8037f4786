"""Metric names in a PromQL expression, by PromQL's own grammar (the promql-parser package)."""

from __future__ import annotations

import promql_parser


def series_names(expr: str) -> set[str]:
    """Metric names of every vector selector in `expr`, by PromQL's own grammar."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name_matchers = [m for m in node.matchers.matchers if m.name == "__name__"]
            # A name matched by regex could select anything: the generators never need one.
            assert all(m.op == promql_parser.MatchOp.Equal for m in name_matchers), expr
            assert (node.name is None) != (not name_matchers), f"no single metric name in {expr!r}"
            names.add(node.name or name_matchers[0].value)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
