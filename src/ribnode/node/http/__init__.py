"""The node's HTTP service: DICOMweb STOW-RS ingest, health checks, Prometheus metrics."""

from ribnode.node.http.server import HttpService, HttpServiceError

__all__ = ["HttpService", "HttpServiceError"]
