"""The sidecar's well-known ports and group (DESIGN.md §4), in one place.

The local platform's transparent capture, Kubernetes injection and the xDS
translation all speak of them; they are Istio's numbers, so Istio's tooling
and habits carry over.
"""

from __future__ import annotations

PROXY_UID = 1337
PROXY_GID = 1337
"""Istio's proxy user and group: the capture rules let the sidecar's own traffic pass."""
ADMIN_PORT = 15000
OUTBOUND_CAPTURE_PORT = 15001
"""Where iptables sends a workload's outbound TCP (Istio's virtualOutbound)."""
INBOUND_CAPTURE_PORT = 15006
"""Where iptables sends the workload's inbound TCP (Istio's virtualInbound)."""
MERGED_METRICS_PORT = 15020
"""Istio's agent port: the merged Prometheus metrics and the application's probes."""
HEALTH_PORT = 15021
"""Istio's readiness port (`/healthz/ready`)."""
ENVOY_METRICS_PORT = 15090
SIDECAR_PORTS = (ADMIN_PORT, MERGED_METRICS_PORT, HEALTH_PORT, ENVOY_METRICS_PORT)
"""Never captured inbound: probes and Prometheus reach the sidecar directly."""
