"""Plain-text tables like kubectl's, ages like kubectl's, and per-kind columns for `get`.

Tables are laid out by rich (three spaces between columns, no borders, no
wrapping, no colour) and returned as text, so output piped to `grep` or a file
stays one row per line.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

_WIDE = 100_000


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """The rows under the headers, left-aligned, each cell on one line."""
    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="")
    for header in headers:
        grid.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=_WIDE, color_system=None, highlight=False, emoji=False, markup=False
    )
    console.print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def human_duration(seconds: float) -> str:
    """kubectl's compact age: `45s`, `5m30s`, `3h`, `2d4h`, `400d`, `3y12d`."""
    if seconds < -1:
        return "<invalid>"
    total = max(0, int(seconds))
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest_days = divmod(days, 365)
    if years < 8:
        return f"{years}y{rest_days}d" if rest_days else f"{years}y"
    return f"{years}y"


def age(timestamp: str, now: float) -> str:
    """The age of an RFC 3339 timestamp (`2024-01-02T03:04:05Z`) at `now` (epoch seconds)."""
    try:
        created = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return human_duration(now - created.timestamp())


def _join(values: Any) -> str:
    if not isinstance(values, list) or not values:
        return ""
    return ",".join(str(value) for value in values)


def _labels(values: Any) -> str:
    if not isinstance(values, Mapping):
        return ""
    return ",".join(f"{key}={value}" for key, value in sorted(values.items()))


def _vs_destinations(spec: Mapping[str, Any]) -> str:
    hosts: list[str] = []
    for section in ("http", "tcp"):
        for rule in spec.get(section) or []:
            for route in rule.get("route") or []:
                destination = route.get("destination") or {}
                host = str(destination.get("host", ""))
                if destination.get("subset"):
                    host += f"/{destination['subset']}"
                if host and host not in hosts:
                    hosts.append(host)
    return ",".join(hosts)


def _ports(spec: Mapping[str, Any]) -> str:
    return ",".join(
        f"{port.get('name', '')}:{port.get('number', '')}/{port.get('protocol', 'TCP')}"
        for port in spec.get("ports") or []
    )


Column = tuple[str, Callable[[Mapping[str, Any]], str]]

_COLUMNS: Mapping[str, tuple[tuple[Column, ...], tuple[Column, ...]]] = {
    "VirtualService": (
        (
            ("GATEWAYS", lambda s: _join(s.get("gateways"))),
            ("HOSTS", lambda s: _join(s.get("hosts"))),
        ),
        (("DESTINATIONS", _vs_destinations),),
    ),
    "DestinationRule": (
        (("HOST", lambda s: str(s.get("host", ""))),),
        (
            ("SUBSETS", lambda s: ",".join(str(x.get("name")) for x in s.get("subsets") or [])),
            (
                "LB",
                lambda s: str(
                    ((s.get("trafficPolicy") or {}).get("loadBalancer") or {}).get("simple", "")
                ),
            ),
        ),
    ),
    "ServiceEntry": (
        (
            ("HOSTS", lambda s: _join(s.get("hosts"))),
            ("LOCATION", lambda s: str(s.get("location", "MESH_EXTERNAL"))),
            ("RESOLUTION", lambda s: str(s.get("resolution", "NONE"))),
        ),
        (("PORTS", _ports), ("ADDRESSES", lambda s: _join(s.get("addresses")))),
    ),
    "WorkloadEntry": (
        (("ADDRESS", lambda s: str(s.get("address", ""))),),
        (("LABELS", lambda s: _labels(s.get("labels"))),),
    ),
    "PeerAuthentication": (
        (("MODE", lambda s: str((s.get("mtls") or {}).get("mode", "UNSET"))),),
        (("SELECTOR", lambda s: _labels((s.get("selector") or {}).get("matchLabels"))),),
    ),
    "AuthorizationPolicy": (
        (("ACTION", lambda s: str(s.get("action", "ALLOW"))),),
        (
            ("SELECTOR", lambda s: _labels((s.get("selector") or {}).get("matchLabels"))),
            ("RULES", lambda s: str(len(s.get("rules") or []))),
        ),
    ),
}


def resource_table(
    kind: str,
    documents: Sequence[Mapping[str, Any]],
    *,
    now: float,
    with_namespace: bool = False,
    wide: bool = False,
) -> str:
    """`kubectl get`'s table for stored documents of one kind: NAME, kind columns, AGE."""
    plain, extra = _COLUMNS.get(kind, ((), ()))
    columns = plain + extra if wide else plain
    headers = (["NAMESPACE"] if with_namespace else []) + ["NAME"]
    headers += [title for title, _ in columns] + ["AGE"]
    rows: list[list[str]] = []
    for document in documents:
        meta = document.get("metadata") or {}
        spec = document.get("spec") or {}
        row = [str(meta.get("namespace", ""))] if with_namespace else []
        row.append(str(meta.get("name", "")))
        row += [value(spec) for _, value in columns]
        row.append(age(str(meta.get("creationTimestamp", "")), now))
        rows.append(row)
    return table(headers, rows)
