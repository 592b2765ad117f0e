"""Trellis on Kubernetes, the pure parts: what sidecar injection adds to a pod, the
JSONPatch and AdmissionReview the webhook answers with, and the manifests' data.

Nothing here does I/O: the webhook's HTTPS server lives in `trellis.controlplane`,
reading and printing files in `trellis.cli`.
"""
