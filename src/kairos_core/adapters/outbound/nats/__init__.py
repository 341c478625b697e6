"""NATS JetStream: the tick wire format, the stream and consumer kairos uses, and the publisher."""

from kairos_core.adapters.outbound.nats.jetstream import (
    ConsumerSpec,
    NatsUnavailable,
    StreamSpec,
    connect,
    ensure_consumer,
    ensure_stream,
    last_ticks,
)
from kairos_core.adapters.outbound.nats.publisher import NatsTickPublisher, PublisherStats

__all__ = [
    "ConsumerSpec",
    "NatsTickPublisher",
    "NatsUnavailable",
    "PublisherStats",
    "StreamSpec",
    "connect",
    "ensure_consumer",
    "ensure_stream",
    "last_ticks",
]
