"""Small PromQL builders over catalog entries, so that no query spells a metric name by hand."""

from __future__ import annotations

from collections.abc import Mapping

from inference.metrics import Kind, MetricSpec

# A matcher value: `"x"` is an equality matcher; `("=~", "x|y")` names its operator.
MatcherValue = str | tuple[str, str]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(series: str, matchers: Mapping[str, MatcherValue] | None = None) -> str:
    """`series{label="value", ...}`; a series of a catalog metric or a recording rule name."""
    parts = []
    for label, value in (matchers or {}).items():
        op, text = ("=", value) if isinstance(value, str) else value
        parts.append(f"{label}{op}{_quote(text)}")
    return f"{series}{{{', '.join(parts)}}}" if parts else series


def _name_of(spec: MetricSpec, kind: Kind) -> str:
    if spec.kind is not kind:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a {kind.value}")
    return spec.name


def bucket(spec: MetricSpec) -> str:
    """The `_bucket` series of a histogram in the catalog."""
    return f"{_name_of(spec, Kind.HISTOGRAM)}_bucket"


def counter(spec: MetricSpec) -> str:
    """The series name of a counter in the catalog."""
    return _name_of(spec, Kind.COUNTER)


def gauge(spec: MetricSpec) -> str:
    """The series name of a gauge in the catalog."""
    return _name_of(spec, Kind.GAUGE)


def quantile(q: float, bucket_rates: str, by: tuple[str, ...]) -> str:
    """`histogram_quantile` over already-rated buckets, aggregated by `by` (plus `le`)."""
    return f"histogram_quantile({q}, sum by ({', '.join((*by, 'le'))}) ({bucket_rates}))"
