"""`GET /api/v1/mesh`: what a client needs to know to join this control plane's mesh.

The launcher and other clients read where proxies connect (the xDS address, and
the Unix socket that also reaches sidecars in other network namespaces), the
trust domain of workload identities and the mesh's root namespace, instead of
assuming the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class MeshInfo:
    """The control plane's mesh-wide facts; `xds_socket` is None when none is served."""

    trust_domain: str
    root_namespace: str
    xds_address: str
    xds_socket: str | None = None


class MeshDocument(BaseModel):
    """The answer of `GET /api/v1/mesh` (its schema in the OpenAPI document)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["Mesh"] = "Mesh"
    trustDomain: str = Field(  # noqa: N815 - the JSON field name
        description="SPIFFE trust domain of workload identities (spiffe://DOMAIN/ns/NS/sa/SA)."
    )
    rootNamespace: str = Field(  # noqa: N815
        description="Where mesh-wide policy lives (istio-system is accepted as an alias)."
    )
    xdsAddress: str = Field(  # noqa: N815
        description="HOST:PORT of xDS (ADS) and the CA's certificate service, plaintext gRPC."
    )
    xdsSocket: str | None = Field(  # noqa: N815
        description="Absolute path of the Unix socket serving the same (owner only, mode "
        "0600); proxies use it as --xds unix:PATH, also from other network namespaces. "
        "null when not served."
    )


def mesh_router(info: MeshInfo) -> APIRouter:
    router = APIRouter(tags=["mesh"])
    document = MeshDocument(
        trustDomain=info.trust_domain,
        rootNamespace=info.root_namespace,
        xdsAddress=info.xds_address,
        xdsSocket=info.xds_socket,
    )

    @router.get(
        "/api/v1/mesh",
        summary="The mesh: trust domain, root namespace, and where proxies connect",
        response_model=MeshDocument,
    )
    async def mesh() -> MeshDocument:
        return document

    return router
