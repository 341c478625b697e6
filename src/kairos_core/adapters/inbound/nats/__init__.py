"""Ticks from NATS: a live feed for remote readers, the persist role's durable batches, and
the NATS parts' status."""

from kairos_core.adapters.inbound.nats.batches import JetStreamTickBatches
from kairos_core.adapters.inbound.nats.feed import NatsTickFeed
from kairos_core.adapters.inbound.nats.status import NatsStatusReader

__all__ = ["JetStreamTickBatches", "NatsStatusReader", "NatsTickFeed"]
