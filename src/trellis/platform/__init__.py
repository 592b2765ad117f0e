"""Platforms: the local launcher (`trellis run`, `trellis.platform.launcher`); Kubernetes later."""
