"""Prometheus metrics, named as in DESIGN §5, on a registry owned by one service instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Quality scores: correlations in [-1, 1], AUCs / IoUs / hits in [0, 1], completeness error >= 0.
QUALITY_BUCKETS = (-0.5, 0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1, 2, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "saliency_requests", "RPCs by outcome", ["rpc", "model", "code"], registry=r
        )
        self.method_latency = Histogram(
            "saliency_method_latency_seconds",
            "Time from request start until a map is delivered",
            ["model", "method", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "saliency_queue_wait_seconds", "Time waiting before compute starts", ["model", "pool"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_samples = Histogram(
            "saliency_batch_samples", "Samples per model call", ["model", "pool"],
            buckets=SIZE_BUCKETS, registry=r,
        )
        self.batch_requests = Histogram(
            "saliency_batch_requests", "Distinct requests per model call", ["model", "pool"],
            buckets=SIZE_BUCKETS, registry=r,
        )
        self.inflight = Gauge(
            "saliency_inflight_requests", "Requests being served", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "saliency_queue_depth", "Waiting work: fast requests or deep samples", ["model", "pool"],
            registry=r,
        )
        self.rejected = Counter(
            "saliency_rejected", "Requests refused or dropped", ["model", "reason"], registry=r
        )
        self.dropped_samples = Counter(
            "saliency_dropped_samples",
            "Deep samples never computed because their request was cancelled or timed out",
            ["model"],
            registry=r,
        )
        self.quality = Histogram(
            "saliency_explanation_quality",
            "Quality scores of delivered maps (evaluate requests and sampled traffic); "
            "metric names in docs/faithfulness.md",
            ["model", "method", "metric"],
            buckets=QUALITY_BUCKETS,
            registry=r,
        )

        self.cache_hits = Counter(
            "saliency_cache_hits",
            "Maps not computed for their request: from the explanation cache, or shared with an "
            "identical request's computation in flight",
            ["model", "method"],
            registry=r,
        )
        self.cache_misses = Counter(
            "saliency_cache_misses", "Cacheable maps computed because the cache did not hold them",
            ["model", "method"], registry=r,
        )
        self.cache_bytes = Gauge(
            "saliency_cache_bytes", "Bytes held by the explanation cache", registry=r
        )

    def serve(self, host: str, port: int):
        """Start the /metrics HTTP endpoint; returns (server, bound port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port
