"""Prometheus metrics of the server: requests, latency, batches, padding, queue depth, load time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from berthing.engine.batcher import BatchObserver
from berthing.engine.model import Model

disable_created_metrics()  # the *_created series double the output and nobody graphs them

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Admission:
    """What each model's batcher counts itself, read at scrape time: items dropped before they were computed (their
    client went away, or their deadline passed), batches past batch_timeout_s, the expected wait, readiness."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "berthing_queue_dropped", "Queued items removed before they were computed, by reason (disconnected, "
            "deadline)", labels=["model", "reason"],
        )
        timeouts = CounterMetricFamily(
            "berthing_batch_timeouts", "Batches that ran past batch_timeout_s", labels=["model"]
        )
        wait = GaugeMetricFamily(
            "berthing_expected_wait_seconds", "Expected wait of a new request (queued tokens over measured tokens/s; "
            "-1 before the first measurement)", labels=["model"],
        )
        rate = GaugeMetricFamily("berthing_tokens_per_second", "Measured drain rate while busy", labels=["model"])
        for label, model in list(self.models.items()):
            batcher = model.batcher
            if batcher is None:
                continue
            for reason, count in batcher.dropped.items():
                dropped.add_metric([label, reason], count)
            timeouts.add_metric([label], batcher.batch_timeouts)
            expected = batcher.expected_wait()
            wait.add_metric([label], -1.0 if expected is None else expected)
            rate.add_metric([label], batcher.throughput.rate or 0.0)
        yield from (dropped, timeouts, wait, rate)


class Metrics:
    """One CollectorRegistry per server, so several servers (tests) never share counters."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "berthing_requests", "Requests by model, protocol, route and status", ["model", "protocol", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "berthing_request_seconds", "Request latency", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "berthing_batch_size", "Items per runtime batch", ["model"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "berthing_batch_tokens", "Padded tokens per runtime batch", ["model"], buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "berthing_batch_seconds", "Runtime time per batch", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter(
            "berthing_tokens", "Tokens run: real vs padded (padding efficiency = real/padded)",
            ["model", "kind"], registry=r,
        )
        self.queue_depth = Gauge("berthing_queue_depth", "Items waiting for a batch", ["model"], registry=r)
        self.load_seconds = Gauge(
            "berthing_model_load_seconds", "Seconds to load the model", ["model", "version"], registry=r
        )

        self.verification = Gauge(
            "berthing_model_verification",
            "1 for the load-time check's outcome on this CPU (passed, fallback, failed-served, not-needed, skipped, "
            "no-probe) and the graph served",
            ["model", "version", "outcome", "graph"], registry=r,
        )
        self.workers = Gauge("berthing_model_workers", "Runtime workers of each model version", ["model"], registry=r)
        self.lanes = Gauge(
            "berthing_model_lanes", "Single-thread lanes added under sustained load (0 until then)", ["model"], registry=r
        )
        self.admission = _Admission()
        r.register(self.admission)  # type: ignore[arg-type]

    def watch(self, model: Model) -> BatchObserver:
        """Register a model's gauges and return the observer its batcher calls after each batch."""
        label = f"{model.name}:{model.version}"
        self.admission.models[label] = model
        self.load_seconds.labels(model.name, model.version).set(model.load_seconds)
        if model.verification:
            self.verification.labels(*_verification_labels(model)).set(1)
        self.workers.labels(label).set_function(lambda: len(model.runtimes))
        self.lanes.labels(label).set_function(lambda: len(model.lanes))
        self.queue_depth.labels(label).set_function(lambda: model.batcher.depth if model.batcher else 0)
        size = self.batch_size.labels(label)
        padded_tokens = self.batch_tokens.labels(label)
        seconds = self.batch_seconds.labels(label)
        real = self.tokens.labels(label, "real")
        padded = self.tokens.labels(label, "padded")

        def observe(items: int, padded_count: int, real_count: int, took: float) -> None:
            size.observe(items)
            padded_tokens.observe(padded_count)
            seconds.observe(took)
            real.inc(real_count)
            padded.inc(padded_count)

        return observe

    def forget(self, model: Model) -> None:
        """Drop an unregistered version's gauges and batch series (request counters keep their history)."""
        label = f"{model.name}:{model.version}"
        self.admission.models.pop(label, None)
        for metric, labels in (
            (self.load_seconds, (model.name, model.version)), (self.queue_depth, (label,)), (self.workers, (label,)),
            (self.lanes, (label,)), (self.batch_size, (label,)), (self.batch_tokens, (label,)), (self.batch_seconds, (label,)),
            (self.tokens, (label, "real")), (self.tokens, (label, "padded")),
            (self.verification, _verification_labels(model)),
        ):
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


def _verification_labels(model: Model) -> tuple[str, str, str, str]:
    check = model.verification or {}
    return model.name, model.version, str(check.get("outcome")), str(check.get("graph"))
