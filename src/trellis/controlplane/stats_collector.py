"""Scrapes every connected proxy's `/stats/prometheus` and keeps the last minutes of samples.

Every `interval` seconds the collector reads the metrics of each proxy
`targets()` names (at most `concurrency` at once, each bounded by `timeout`
and `max_bytes`), reduces them (`stats_parse`) and appends one `Sample` to a
ring holding `retention` seconds. A slow or dead proxy costs its own scrape
`timeout` and is recorded as failed; it never delays the control plane's
other work, which runs on the same event loop between awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from trellis.controlplane.stats_parse import SeriesKey, parse_counters
from trellis.controlplane.stats_window import Sample

log = logging.getLogger("trellis.controlplane.stats")

METRICS_PATH = "/stats/prometheus"
DEFAULT_INTERVAL = 5.0
DEFAULT_RETENTION = 900.0


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """A proxy to scrape: its node id and admin address `HOST:PORT`."""

    proxy_id: str
    address: str


@dataclass(frozen=True, slots=True)
class ScrapeOutcome:
    """How the last scrape of one proxy went (`error` is empty when it worked)."""

    proxy_id: str
    address: str
    at: float
    seconds: float
    series: int
    error: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "proxy": self.proxy_id,
            "address": self.address,
            "at": self.at,
            "seconds": round(self.seconds, 4),
            "series": self.series,
            "ok": not self.error,
            "error": self.error or None,
        }


class ScrapeError(Exception):
    """One proxy's metrics could not be read; the message says why."""


class MetricsCollector:
    """The ring of mesh samples and the task that fills it (`run`)."""

    def __init__(
        self,
        targets: Callable[[], Sequence[ScrapeTarget]],
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = 2.0,
        concurrency: int = 16,
        retention: float = DEFAULT_RETENTION,
        max_bytes: int = 8 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0 or timeout <= 0 or concurrency < 1 or retention < interval:
            raise ValueError(
                "interval, timeout and concurrency must be positive and retention ≥ interval"
            )
        self.interval = interval
        self.timeout = min(timeout, interval)
        self.retention = retention
        self._targets = targets
        self._concurrency = concurrency
        self._max_bytes = max_bytes
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(retention / interval) + 2)
        self.outcomes: dict[str, ScrapeOutcome] = {}

    @property
    def samples(self) -> list[Sample]:
        """The samples held, oldest first."""
        return list(self._samples)

    async def run(self) -> None:
        """Scrape every `interval` seconds until cancelled."""
        limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            while True:
                started = time.monotonic()
                await self.collect(client)
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(0.05, self.interval - elapsed))

    async def collect(self, client: httpx.AsyncClient) -> Sample:
        """Scrape every target once, append the sample and return it."""
        targets = list(self._targets())
        gate = asyncio.Semaphore(self._concurrency)
        taken = self._clock()
        results = await asyncio.gather(*(self._scrape(client, gate, target) for target in targets))
        proxies: dict[str, dict[SeriesKey, float]] = {}
        outcomes: dict[str, ScrapeOutcome] = {}
        for target, (counters, outcome) in zip(targets, results, strict=True):
            outcomes[target.proxy_id] = outcome
            if counters is not None:
                proxies[target.proxy_id] = counters
        self.outcomes = outcomes
        sample = Sample(taken, proxies)
        self._samples.append(sample)
        return sample

    async def _scrape(
        self, client: httpx.AsyncClient, gate: asyncio.Semaphore, target: ScrapeTarget
    ) -> tuple[dict[SeriesKey, float] | None, ScrapeOutcome]:
        async with gate:
            started = time.monotonic()
            at = self._clock()
            try:
                async with asyncio.timeout(self.timeout):
                    text = await self._fetch(client, target.address)
                counters = parse_counters(text)
            except (ScrapeError, httpx.HTTPError, TimeoutError, UnicodeDecodeError) as exc:
                message = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    message = f"no answer within {self.timeout:g}s"
                log.debug("scrape of %s at %s failed: %s", target.proxy_id, target.address, message)
                seconds = time.monotonic() - started
                return None, ScrapeOutcome(target.proxy_id, target.address, at, seconds, 0, message)
            seconds = time.monotonic() - started
            outcome = ScrapeOutcome(target.proxy_id, target.address, at, seconds, len(counters))
            return counters, outcome

    async def _fetch(self, client: httpx.AsyncClient, address: str) -> str:
        url = f"http://{address}{METRICS_PATH}"
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ScrapeError(f"{url} answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise ScrapeError(f"{url} sent more than {self._max_bytes} bytes")
        return body.decode("utf-8")
