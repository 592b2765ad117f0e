"""The control plane's virtual IPs: kept in step with the ServiceEntries, saved in the data dir.

The table (`trellis.xds.mesh.vips.VipTable`) lives in `DATA_DIR/service-vips.json`,
rewritten atomically (temporary file, fsync, rename) whenever it changes, so
a host keeps its address across restarts. The file is the control plane's own:
a file it cannot read stops it with a message naming the field, rather than
handing every service a new address behind the workloads' backs.

```json
{"version": 1, "range": "240.240.0.0/16",
 "assigned": {"payment.shop.svc.cluster.local": "240.240.0.1"},
 "held": {"old.shop.svc.cluster.local": {"address": "240.240.0.2", "since": 1700000000.0}}}
```
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trellis.api.meta import Resource
from trellis.api.networking import ServiceEntry
from trellis.errors import ConfigError
from trellis.runtime.files import write_file_atomically
from trellis.xds.mesh.service_addresses import (
    ServiceAddressList,
    hosts_wanting_addresses,
    service_addresses,
)
from trellis.xds.mesh.vips import Held, VipPolicy, VipRangeExhaustedError, VipTable

log = logging.getLogger("trellis.controlplane")

VIPS_FILE = "service-vips.json"
FORMAT_VERSION = 1


def _address(value: object, where: str) -> ipaddress.IPv4Address:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return ipaddress.IPv4Address(value)
    raise ValueError(f"{where}: {value!r} is not an IPv4 address")


def table_from_json(document: Any) -> VipTable:
    """A table from its saved form; ValueError naming the bad field."""
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"version: {document.get('version')!r} is not {FORMAT_VERSION}")
    assigned_in = document.get("assigned", {})
    held_in = document.get("held", {})
    if not isinstance(assigned_in, dict):
        raise ValueError("assigned: expected an object of host -> address")
    if not isinstance(held_in, dict):
        raise ValueError("held: expected an object of host -> {address, since}")
    assigned = {
        str(host): _address(value, f"assigned[{host!r}]") for host, value in assigned_in.items()
    }
    held: dict[str, Held] = {}
    for host, item in held_in.items():
        where = f"held[{host!r}]"
        if not isinstance(item, dict) or not isinstance(item.get("since"), int | float):
            raise ValueError(f"{where}: expected {{'address': IP, 'since': seconds}}")
        held[str(host)] = Held(_address(item.get("address"), f"{where}.address"), item["since"])
    return VipTable(assigned, held).check()


def table_to_json(table: VipTable, policy: VipPolicy) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "range": str(policy.range),
        "assigned": {host: str(address) for host, address in table.assigned.items()},
        "held": {
            host: {"address": str(item.address), "since": item.since}
            for host, item in table.held.items()
        },
    }


class ServiceVips:
    """The address table of one control plane, and the file it is saved in."""

    def __init__(self, path: Path, policy: VipPolicy, table: VipTable | None = None) -> None:
        self.path = path
        self.policy = policy
        self.table = table or VipTable()

    @classmethod
    def open(cls, data_dir: Path, policy: VipPolicy) -> ServiceVips:
        """The table saved in `data_dir` (empty when there is none yet).

        Raises ConfigError naming the file and field when the file is unreadable.
        """
        path = data_dir / VIPS_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, policy)
        except (OSError, UnicodeDecodeError) as exc:
            message = f"cannot read the virtual IP table: {exc}"
            raise ConfigError(message, source=str(path)) from None
        try:
            document = json.loads(text)
            table = table_from_json(document)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise ConfigError(
                f"{exc} (fix or remove the file: every service then gets a new address)",
                source=str(path),
            ) from None
        saved_range = document.get("range")
        if saved_range != str(policy.range):
            log.warning(
                "virtual IP range changed from %s to %s: services outside it get new addresses",
                saved_range,
                policy.range,
            )
        return cls(path, policy, table)

    def sync(self, resources: Iterable[Resource], now: float) -> bool:
        """Give every ServiceEntry host that wants one an address, release the others'.

        Saves the table when it changed and says whether it did. Raises
        VipRangeExhaustedError (after saving what fitted) when the range is full,
        and OSError when the file cannot be written.
        """
        entries = [item for item in resources if isinstance(item, ServiceEntry)]
        hosts = hosts_wanting_addresses(entries)
        if set(self.table.assigned) == hosts and not self._expired(now):
            return False
        try:
            table = self.table.reconcile(hosts, self.policy, now)
        except VipRangeExhaustedError as exc:
            self._save(exc.partial)
            raise
        if table == self.table:
            return False
        self._save(table)
        return True

    def refresh(self, resources: Iterable[Resource], now: float) -> None:
        """`sync`, logging instead of raising: the control plane keeps serving config."""
        try:
            if self.sync(resources, now):
                log.info("virtual IPs: %d service hosts have one", len(self.table.assigned))
        except VipRangeExhaustedError as exc:
            log.error("%s", exc)
        except OSError as exc:
            log.error("cannot save the virtual IP table %s: %s", self.path, exc)

    def _expired(self, now: float) -> bool:
        """Whether a held address is due to be freed, or an assignment left the range."""
        in_range = all(address in self.policy.range for address in self.table.assigned.values())
        hold = self.policy.hold
        return not in_range or any(now - item.since >= hold for item in self.table.held.values())

    def _save(self, table: VipTable) -> None:
        data = json.dumps(table_to_json(table, self.policy), indent=1, sort_keys=True)
        write_file_atomically(self.path, data.encode() + b"\n", 0o644)
        self.table = table

    def addresses(self, resources: Iterable[Resource], namespace: str | None) -> ServiceAddressList:
        """The services with an address, all of them or as seen from `namespace`."""
        entries = [item for item in resources if isinstance(item, ServiceEntry)]
        return service_addresses(entries, self.table, namespace, str(self.policy.range))
