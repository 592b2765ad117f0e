"""`GET /api/v1/service-addresses`: the virtual IP of every service and the names for it.

What the launcher needs to write a workload's hosts file in transparent
capture: with `?namespace=NS`, the services visible from NS and the names
that resolve from there (`trellis.xds.mesh.service_addresses`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from trellis.api.meta import check_dns1123_label
from trellis.controlplane.api_status import StatusError
from trellis.xds.mesh.service_addresses import ServiceAddress, ServiceAddressList

ServiceAddressSource = Callable[[str | None], Awaitable[ServiceAddressList]]
"""await source(namespace or None) -> the current virtual IPs (allocating any missing)."""


def service_address_json(item: ServiceAddress) -> dict[str, Any]:
    return {
        "namespace": item.namespace,
        "serviceEntry": item.service_entry,
        "host": item.host,
        "address": item.address,
        "ports": [
            {"number": port.number, "name": port.name, "protocol": port.protocol}
            for port in item.ports
        ],
        "names": list(item.names),
        "shortNames": list(item.short_names),
    }


def service_address_list_json(found: ServiceAddressList) -> dict[str, Any]:
    return {
        "kind": "ServiceAddressList",
        "range": found.vip_range,
        "namespace": found.namespace,
        "items": [service_address_json(item) for item in found.items],
    }


def service_address_router(source: ServiceAddressSource) -> APIRouter:
    router = APIRouter(tags=["services"])

    @router.get(
        "/api/v1/service-addresses",
        summary="Virtual IPs of services and the names that resolve to them",
        description="One item per service host with a virtual IP (transparent capture). "
        "`names` resolve from every namespace the service is exported to; `shortNames` "
        "only from the service's own namespace. With `namespace`, only the services "
        "visible from it, with the names as seen from there.",
    )
    async def service_addresses(
        namespace: Annotated[
            str | None,
            Query(description="List what workloads in this namespace see"),
        ] = None,
    ) -> dict[str, Any]:
        if namespace is not None:
            try:
                check_dns1123_label(namespace, "namespace")
            except ValueError as exc:
                raise StatusError(400, str(exc)) from None
        return service_address_list_json(await source(namespace))

    return router
