"""Prometheus text exposition (format 0.0.4) and Envoy-style counters and gauges.

The helpers build exposition text; `Histogram` is the bucket store behind
Istio's histograms; `StatsRegistry` holds the proxy's own Envoy-named stats
(`envoy_cluster_upstream_rq_total{envoy_cluster_name="x"}` and so on) and
renders them as Prometheus text or as Envoy's plain `/stats` listing.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable

# Envoy's default histogram bucket bounds (`HistogramSettingsImpl::defaultBuckets`).
# Istio records all of its standard histograms (milliseconds and bytes) with them.
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000
)  # fmt: skip

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]


def is_metric_name(name: str) -> bool:
    """True if `name` is a valid Prometheus metric name."""
    return _METRIC_NAME.fullmatch(name) is not None


def is_label_name(name: str) -> bool:
    """True if `name` is a valid, non-reserved Prometheus label name."""
    return _LABEL_NAME.fullmatch(name) is not None and not name.startswith("__")


def escape_label_value(value: str) -> str:
    """Escape backslash, double quote and line feed, as the text format requires."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    """Escape backslash and line feed in a HELP docstring."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction; NaN and infinities as Prometheus spells them."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def label_pairs(labels: Iterable[tuple[str, str]]) -> str:
    """`a="x",b="y"` (no braces), values escaped."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)


def braces(pairs: str) -> str:
    """Wrap a label list in braces; an empty list gives an empty string."""
    return f"{{{pairs}}}" if pairs else ""


def family_header(name: str, kind: str, help_text: str = "") -> str:
    """The `# HELP` (if any) and `# TYPE` lines of one metric family."""
    head = f"# HELP {name} {escape_help(help_text)}\n" if help_text else ""
    return f"{head}# TYPE {name} {kind}\n"


class Histogram:
    """Per-bucket counts (non-cumulative until rendered), a sum and a count.

    `observe` is O(log buckets): one bisect and three additions. Bucket `i`
    holds values `<= bounds[i]`; the last slot is the `+Inf` overflow.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = ENVOY_DEFAULT_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum: float = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self, name: str, pairs: str, out: list[str]) -> None:
        """Append `_bucket` (cumulative, with `+Inf`), `_sum` and `_count` lines to `out`."""
        sep = "," if pairs else ""
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{{pairs}{sep}le="{format_value(bound)}"}} {running}\n')
        running += self.counts[-1]
        out.append(f'{name}_bucket{{{pairs}{sep}le="+Inf"}} {running}\n')
        out.append(f"{name}_sum{braces(pairs)} {format_value(self.sum)}\n")
        out.append(f"{name}_count{braces(pairs)} {running}\n")


# --- Envoy-style proxy stats -------------------------------------------------------


class CounterCell:
    """A monotonically increasing integer: `cell.value += 1`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class GaugeCell:
    """A value that goes up and down: assign or add to `cell.value`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0


# Envoy's tag extractors for the common scopes: (Prometheus label, stat name root).
_ENVOY_SCOPE_TAGS = (
    ("envoy_cluster_name", "cluster"),
    ("envoy_http_conn_manager_prefix", "http"),
    ("envoy_tcp_prefix", "tcp"),
    ("envoy_listener_address", "listener"),
)


def envoy_stat_name(name: str, labels: Labels) -> str:
    """Rebuild Envoy's dotted stat name from a Prometheus name and its labels.

    `envoy_cluster_upstream_rq_total{envoy_cluster_name="x"}` gives
    `cluster.x.upstream_rq_total`; `envoy_server_live` gives `server.live`.
    Labels other than Envoy's scope tags are not represented.
    """
    base = name.removeprefix("envoy_")
    for tag, root in _ENVOY_SCOPE_TAGS:
        if base.startswith(root + "_"):
            for label, value in labels:
                if label == tag:
                    return f"{root}.{value}.{base[len(root) + 1 :]}"
    root, sep, rest = base.partition("_")
    return f"{root}.{rest}" if sep else base


class _Family:
    __slots__ = ("cells", "help", "kind", "stat_names")

    def __init__(self, kind: str, help_text: str) -> None:
        self.kind = kind
        self.help = help_text
        self.cells: dict[Labels, CounterCell | GaugeCell] = {}
        self.stat_names: dict[Labels, str] = {}


class StatsRegistry:
    """Counters and gauges named like Envoy's Prometheus output.

    Get a cell once (at config time) and keep it; asking again for the same
    name and labels returns the same cell.
    """

    __slots__ = ("_families",)

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def counter(
        self, name: str, labels: Labels = (), *, help_text: str = "", stat_name: str | None = None
    ) -> CounterCell:
        cell = self._cell(name, labels, "counter", help_text, stat_name)
        assert isinstance(cell, CounterCell)
        return cell

    def gauge(
        self, name: str, labels: Labels = (), *, help_text: str = "", stat_name: str | None = None
    ) -> GaugeCell:
        cell = self._cell(name, labels, "gauge", help_text, stat_name)
        assert isinstance(cell, GaugeCell)
        return cell

    def _cell(
        self, name: str, labels: Labels, kind: str, help_text: str, stat_name: str | None
    ) -> CounterCell | GaugeCell:
        family = self._families.get(name)
        cell = None if family is None else family.cells.get(labels)
        if family is not None and family.kind != kind:
            raise ValueError(f"{name} is already registered as a {family.kind}")
        if cell is not None:
            return cell
        names = [label for label, _ in labels]
        if not all(map(is_label_name, names)) or len(set(names)) != len(names):
            raise ValueError(f"invalid or repeated label names for {name}: {labels!r}")
        if family is None:
            if not is_metric_name(name):
                raise ValueError(f"invalid metric name {name!r}")
            family = self._families[name] = _Family(kind, help_text)
        cell = family.cells[labels] = CounterCell() if kind == "counter" else GaugeCell()
        family.stat_names[labels] = stat_name or envoy_stat_name(name, labels)
        return cell

    def remove(self, name: str, labels: Labels = ()) -> None:
        """Forget one series (say, of a cluster that was removed); unknown ones are ignored."""
        family = self._families.get(name)
        if family is not None and family.cells.pop(labels, None) is not None:
            del family.stat_names[labels]
            if not family.cells:
                del self._families[name]

    def render_prometheus(self) -> str:
        """Families sorted by name, series sorted by labels, Prometheus text format 0.0.4."""
        out: list[str] = []
        for name in sorted(self._families):
            family = self._families[name]
            out.append(family_header(name, family.kind, family.help))
            for labels in sorted(family.cells):
                value = format_value(family.cells[labels].value)
                out.append(f"{name}{braces(label_pairs(labels))} {value}\n")
        return "".join(out)

    def render_envoy_text(self) -> str:
        """Envoy's plain `/stats` listing: `cluster.x.upstream_rq_total: 5`, sorted by name."""
        lines = [
            f"{family.stat_names[labels]}: {format_value(cell.value)}\n"
            for family in self._families.values()
            for labels, cell in family.cells.items()
        ]
        lines.sort()
        return "".join(lines)
