"""The demo's screen: a table per edge of the shop and the lines around it (rich)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshstats import Edge, EdgeStats, canary_share
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

ORDER = ("shopper", "web", "cart", "catalog", "db", "payment-v1", "payment-v2")
"""Edges are listed in the order a request travels."""
CANARY_SERVICE = "payment"
CANARY_WEIGHTS = "90/10"


def _rank(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def edge_order(edge: Edge) -> tuple[int, int, str, str]:
    return (_rank(edge.source), _rank(edge.destination), edge.source, edge.destination)


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _success_style(share: float | None) -> str:
    if share is None:
        return "dim"
    return "green" if share >= 0.99 else "yellow" if share >= 0.9 else "red"


def _not_ok(stats: EdgeStats) -> str:
    codes = sorted((code, n) for code, n in stats.codes.items() if not code.startswith("2") and n)
    return " ".join(f"{code} x{n:.0f}" for code, n in codes) or "-"


def edge_table(
    current: Mapping[Edge, EdgeStats] | None, total: Mapping[Edge, EdgeStats], title: str
) -> Table:
    """One row per edge: the last window's rate, success and latency (or the whole run's when
    `current` is None), mTLS, and the whole run's requests and non-2xx answers."""
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    table.add_column("source → destination", no_wrap=True)
    table.add_column("version")
    for name in ("req/s", "success", "p50 ms", "p99 ms"):
        table.add_column(name, justify="right")
    table.add_column("mTLS", justify="center")
    table.add_column("requests", justify="right")
    table.add_column("not 2xx", no_wrap=True)
    for edge in sorted(total, key=edge_order):
        whole = total[edge]
        now = whole if current is None else current.get(edge)
        busy = now is not None and now.requests > 0
        share = now.success if now is not None else None
        mtls = whole.mtls
        table.add_row(
            edge.label,
            edge.version,
            f"{now.rate:.1f}" if now is not None else "0.0",
            Text(percent(share), style=_success_style(share)),
            ms(now.percentile(0.5)) if busy and now else "-",
            ms(now.percentile(0.99)) if busy and now else "-",
            Text(mtls, style="green" if mtls == "yes" else "red"),
            f"{whole.requests:.0f}",
            _not_ok(whole),
        )
    return table


def canary_line(total: Mapping[Edge, EdgeStats]) -> Text:
    share = canary_share(total.values(), CANARY_SERVICE)
    paid = sum(share.values())
    if not paid:
        return Text(f"{CANARY_SERVICE} canary: no payments yet", style="dim")
    parts = " · ".join(f"{version} {n * 100 / paid:.1f}%" for version, n in share.items())
    return Text.assemble(
        (f"{CANARY_SERVICE} canary ", "bold"),
        f"(2xx answers by version): {parts} of {paid:.0f}; ",
        f"the VirtualService asks {CANARY_WEIGHTS}",
    )


@dataclass(frozen=True, slots=True)
class Faults:
    """What the demo did to payment-v1, and what the mesh made of it since then."""

    since: float
    fail_rate: float
    app_port: int
    caller_codes: Mapping[str, float] = field(default_factory=dict)
    """What web's sidecar answered web for payment (after retries), since the faults began."""
    at_payment: EdgeStats | None = None
    """web → payment-v1 as payment-v1's sidecar saw it, since the faults began."""

    def lines(self) -> list[Text]:
        told = Text.assemble(
            ("faults ", "bold red"),
            f"since {clock(self.since)}: payment-v1 fails {self.fail_rate:.0%} of payments "
            f"(told directly on its own port, POST 127.0.0.1:{self.app_port}/admin/faults)",
        )
        total = sum(self.caller_codes.values())
        ok = sum(n for code, n in self.caller_codes.items() if code.startswith("2"))
        seen = self.at_payment
        at_v1 = percent(seen.success) if seen is not None else "-"
        retried = Text.assemble(
            "   what web got from payment after the mesh's retries: ",
            (percent(ok / total if total else None), _success_style(ok / total if total else None)),
            f" ok of {total:.0f} · at payment-v1 itself: ",
            (at_v1, _success_style(seen.success if seen else None)),
            f" ok of {seen.requests if seen else 0:.0f} (retries: 3, per try 1s)",
        )
        return [told, retried]


@dataclass(frozen=True, slots=True)
class Screen:
    """Everything on the demo's screen at one refresh."""

    header: Sequence[Text]
    progress: Text
    current: Mapping[Edge, EdgeStats] | None
    total: Mapping[Edge, EdgeStats]
    refresh: float
    faults: Faults | None
    next_steps: Sequence[str]

    def render(self) -> RenderableType:
        title = (
            f"edges (sidecars' istio_* metrics, reporter=destination; rates over {self.refresh:g}s)"
        )
        parts: list[RenderableType] = [*self.header, self.progress]
        parts.append(edge_table(self.current, self.total, title))
        parts.append(canary_line(self.total))
        if self.faults is not None:
            parts.extend(self.faults.lines())
        parts.append(Text("where to look next (while it runs, in another terminal):", "bold"))
        parts.extend(Text(f"  {line}", "cyan") for line in self.next_steps)
        return Group(*parts)
