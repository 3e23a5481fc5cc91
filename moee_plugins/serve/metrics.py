"""Prometheus metrics of one server: requests, inputs, tokens, batch sizes, queue time and latencies.

Each app has a registry of its own, so several servers in one process (tests, Ray replicas) never mix counts.
"""

from __future__ import annotations

from typing import Any

from .._extras import require

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class ServerMetrics:
    """The counters and histograms ``GET /metrics`` exposes (names start with ``moee_``)."""

    def __init__(self) -> None:
        prometheus = require("prometheus_client", "serve", feature="moee serve")
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        counter, histogram, gauge = prometheus.Counter, prometheus.Histogram, prometheus.Gauge
        r = self.registry
        self.requests = counter("moee_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.request_seconds = histogram("moee_request_seconds", "time from request to response", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.inputs = counter("moee_inputs", "texts embedded", registry=r)
        self.tokens = counter("moee_tokens", "tokens embedded (prompt included)", registry=r)
        self.truncated = counter("moee_truncated_inputs", "texts cut to --max-length tokens", registry=r)
        self.rejected = counter("moee_rejected_requests", "requests refused before queueing", ["reason"], registry=r)
        self.queue_seconds = histogram("moee_queue_seconds", "time a request waits before its first row is batched",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_inputs = gauge("moee_queue_inputs", "texts waiting for the model", registry=r)
        self.queue_tokens = gauge("moee_queue_tokens", "tokens waiting for the model", registry=r)
        self.failures = counter("moee_failures", "forward passes or combinations that failed (then retried per "
                                "request)", ["stage"], registry=r)
        self.timeouts = counter("moee_request_timeouts", "requests not answered within --request-timeout", registry=r)
        # one observation per forward pass that actually ran (encode_batch call), so _count is the pass count
        self.batch_size = histogram("moee_batch_size", "texts per forward pass", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = histogram("moee_batch_tokens", "real tokens per forward pass", buckets=_TOKEN_BUCKETS,
                                      registry=r)
        self.batch_padded_tokens = counter("moee_batch_padded_tokens", "padded tokens (rows x longest) computed",
                                           registry=r)
        self.batch_seconds = histogram("moee_batch_seconds", "time of one forward pass",
                                       buckets=_LATENCY_BUCKETS, registry=r)

    # BatchObserver
    def observe_batch(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.batch_tokens.observe(tokens)
        self.batch_padded_tokens.inc(padded_tokens)
        self.batch_seconds.observe(seconds)

    def observe_queue(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)

    def set_queue_depth(self, inputs: int, tokens: int) -> None:
        self.queue_inputs.set(inputs)
        self.queue_tokens.set(tokens)

    def observe_failure(self, stage: str) -> None:
        self.failures.labels(stage=stage).inc()

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST

    def sample(self, name: str, labels: dict[str, Any] | None = None) -> float:
        """One sample's current value (0 when absent), e.g. ``sample("moee_batch_size_count")``."""
        value = self.registry.get_sample_value(name, {k: str(v) for k, v in (labels or {}).items()})
        return 0.0 if value is None else float(value)
