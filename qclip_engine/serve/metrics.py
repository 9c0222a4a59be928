"""Prometheus metrics of the service, in a registry of the app's own (several apps may share a
process, as tests do), and the ASGI middleware that counts and times every HTTP answer."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServiceMetrics:
    """The ``qclip_*`` metrics served at ``/metrics``."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("qclip_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("qclip_errors", "Error answers by error code", ["code"], registry=r)
        self.request_latency = Histogram("qclip_request_latency_seconds", "Time to answer a request", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.decode_latency = Histogram("qclip_decode_latency_seconds", "Probe, decode and sampling of one video",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("qclip_queue_wait_seconds", "Time a decoded video waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram("qclip_model_latency_seconds", "One backend call over a batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        # Powers of two up to the batch, and the batch itself: every possible size has its bucket edge.
        sizes = sorted({2**k for k in range(max_batch.bit_length()) if 2**k <= max_batch} | {max_batch})
        self.batch_size = Histogram("qclip_batch_size", "Videos per backend call", buckets=sizes, registry=r)
        self.videos_scored = Counter("qclip_videos_scored", "Videos scored (videos/s: its rate)", registry=r)
        self.queue_depth = Gauge("qclip_queue_depth", "Decoded videos waiting for a batch", registry=r)
        self.in_flight = Gauge("qclip_requests_in_flight", "Admitted score requests whose work is not finished",
                               registry=r)
        # 1 for the backend the model runs on once loaded (on the CPU, the one auto measured fastest).
        self.backend_info = Gauge("qclip_backend_info", "The scoring backend: engine, precision, device",
                                  ["backend", "precision", "device"], registry=r)
        self.uploads_in_progress = Gauge("qclip_uploads_in_progress",
                                         "Score request bodies (uploads, JSON) being received", registry=r)

    def refused(self, code: str) -> None:
        """A refusal answered outside the app (serve/connections.py: a connection, not a request)."""
        self.errors.labels(code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts every HTTP answer by endpoint and status and times it (plain ASGI: no body buffering).

    ``endpoints``: the app's routes; any other path is counted as ``other`` so that label
    values stay bounded whatever clients ask for.
    """

    def __init__(self, app, metrics: ServiceMetrics, endpoints: tuple[str, ...]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500  # what the client gets if the app raises before it answers
        started = time.perf_counter()

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)
