"""``NatsStatusReader``: a role's NATS connection and the NATS parts on it, read for metrics and health."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from nats.aio.client import Client

from kairos_core.adapters.inbound.nats.batches import JetStreamTickBatches
from kairos_core.adapters.inbound.nats.feed import NatsTickFeed
from kairos_core.adapters.outbound.nats import NatsTickPublisher
from kairos_core.domain.status import NatsStatus, NatsStatusPort


class NatsStatusReader(NatsStatusPort):
    """Reads ``client``'s state and the counters of whichever parts the role runs on it.

    Whether the connection is up is read from the client at each look; since when is measured
    between looks (the first look that saw it change), as a feed's silence is.
    """

    def __init__(
        self,
        client: Client,
        *,
        publisher: NatsTickPublisher | None = None,
        batches: JetStreamTickBatches | None = None,
        feeds: Sequence[NatsTickFeed] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self._batches = batches
        self._feeds = tuple(feeds)
        self._clock = clock
        self._up = client.is_connected
        self._since = clock()
        self._server = "?"

    def status(self) -> NatsStatus:
        client, now = self._client, self._clock()
        up = client.is_connected
        if up != self._up:
            self._up, self._since = up, now
        url = client.connected_url
        if url is not None:
            self._server = f"{url.hostname}:{url.port}"
        return NatsStatus(
            server=self._server,
            connected=up,
            state_seconds=now - self._since,
            reconnects=int(client.stats["reconnects"]),
            publisher=None if self._publisher is None else self._publisher.status(),
            persist=None if self._batches is None else self._batches.status(),
            feeds=tuple(feed.nats_status() for feed in self._feeds),
        )
