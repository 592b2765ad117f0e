"""Validated user configuration: Istio kinds as pydantic models, loading and analysis.

- `trellis.api.networking`: the models (ServiceEntry, WorkloadEntry,
  VirtualService, DestinationRule and their parts).
- `trellis.api.security`: PeerAuthentication and AuthorizationPolicy.
- `trellis.api.loader`: YAML/JSON text, files, directories, stdin -> resources.
- `trellis.api.analyze`: cross-resource checks with Istio-style codes.
- `trellis.api.hosts`, `trellis.api.services`: host names and resolution.
"""
