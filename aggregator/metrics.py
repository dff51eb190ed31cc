"""Prometheus metrics of one daemon (its own registry: nothing global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages_in = Counter(
            "aggregator_messages_in",
            "Inbound messages stored, per channel kind",
            ["channel"],
            registry=self.registry,
        )
        self.duplicates_in = Counter(
            "aggregator_duplicates_in",
            "Inbound messages acknowledged as repeats and not stored again",
            ["channel"],
            registry=self.registry,
        )
        self.messages_out = Counter(
            "aggregator_messages_out",
            "Outbound messages sent, per channel kind",
            ["channel"],
            registry=self.registry,
        )
        self.send_failures = Counter(
            "aggregator_send_failures",
            "Failed send attempts, per channel kind and outcome (retry or failed)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "aggregator_outbox_depth", "Outbox rows queued or being sent", registry=self.registry
        )
        self.ingest_latency = Histogram(
            "aggregator_ingest_latency_seconds",
            "Time from a message reaching the pipeline to its durable commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.ingest_batch_size = Histogram(
            "aggregator_ingest_batch_size",
            "Messages committed per ingest transaction",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
