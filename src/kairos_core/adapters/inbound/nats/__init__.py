"""Ticks from NATS: a live feed for remote readers, and the persist role's durable batches."""

from kairos_core.adapters.inbound.nats.batches import JetStreamTickBatches
from kairos_core.adapters.inbound.nats.feed import NatsTickFeed

__all__ = ["JetStreamTickBatches", "NatsTickFeed"]
