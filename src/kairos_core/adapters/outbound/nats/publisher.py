"""``NatsTickPublisher``: ticks into a JetStream stream, each confirmed by the server, none dropped.

Publishing is asynchronous: each tick goes out with a reply subject of its own and is held until
JetStream's ack arrives there. At most ``window`` ticks are unconfirmed at once; past that,
``send`` waits, and so does the bus consumer calling it. A tick whose ack is an error, or that
has no ack after ``ack_timeout`` seconds, or that could not be written to the connection, is
published again after a capped, jittered backoff; its ``Nats-Msg-Id`` makes the server drop a
copy it already stored. A retried tick may be stored after later ticks of its symbol: readers
must not assume trade-id order within a subject (the persist role does not).

Measured against ``js.publish_async`` of nats-py: 8 CPU µs per tick here against 21, because the
acks go to one wildcard subscription keyed by a counter instead of a future, a random token and
a JSON parse each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kairos_core.adapters.outbound.nats import wire
from kairos_core.domain import Exchange, MarketTick, TickPublisher
from kairos_core.domain.status import NatsPublisherStatus

log = structlog.get_logger(__name__)

DEFAULT_WINDOW = 10_000
DEFAULT_ACK_TIMEOUT = 5.0


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: ``{"stream": "S", "seq": 7, "duplicate": true}`` or an error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_pub_ack = msgspec.json.Decoder(_PubAck)


@dataclass(slots=True)
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str]
    sent_at: float = 0.0


class RetryReason(StrEnum):
    """Why a publish is repeated."""

    REFUSED = "refused"
    """The stream answered with an error (or nothing takes the subject)."""
    TIMEOUT = "timeout"
    """No ack within the ack timeout."""
    UNSENT = "unsent"
    """Not written: disconnected with the client's buffer full, or closed."""


@dataclass(slots=True)
class PublisherStats:
    published: int = 0
    """Ticks published, first attempts."""
    stored: int = 0
    """Ticks the stream confirmed as new."""
    duplicates: int = 0
    """Ticks the stream confirmed as already stored (dropped by its duplicate window)."""
    retried: Counter[RetryReason] = field(default_factory=Counter)
    """Publishes repeated, by reason."""

    @property
    def retries(self) -> int:
        return self.retried.total()


class NatsTickPublisher(TickPublisher):
    """Publishes ticks on ``<subject_prefix>.<exchange>.<SYMBOL>``; ``start`` before the first
    ``send``, ``aclose`` after the last ``flush``."""

    def __init__(
        self,
        client: Client,
        *,
        subject_prefix: str,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        if window < 1 or ack_timeout <= 0 or not 0 < retry_initial <= retry_max:
            raise ValueError("the publisher needs window >= 1 and positive timeouts")
        self._client = client
        self._prefix = wire.checked_prefix(subject_prefix)
        self._window = window
        self._ack_timeout = ack_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._subjects: dict[tuple[Exchange, str], str] = {}
        self._tokens = itertools.count()
        self._inbox = ""
        self._awaiting: dict[int, _Outgoing] = {}
        """Published and not yet acknowledged, by reply token, oldest first."""
        self._retrying: deque[_Outgoing] = deque()
        self._failures = 0
        """Failures since the last success: the backoff's exponent."""
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._wake = asyncio.Event()
        self._subscription: Subscription | None = None
        self._resender: asyncio.Task[None] | None = None
        self.stats = PublisherStats()

    @property
    def unconfirmed(self) -> int:
        return len(self._awaiting) + len(self._retrying)

    def status(self) -> NatsPublisherStatus:
        stats = self.stats
        return NatsPublisherStatus(
            published=stats.published,
            stored=stats.stored,
            duplicates=stats.duplicates,
            retries={str(reason): stats.retried[reason] for reason in RetryReason},
            unconfirmed=self.unconfirmed,
            window=self._window,
        )

    async def start(self) -> None:
        self._inbox = f"{self._client.new_inbox()}."
        self._subscription = await self._client.subscribe(f"{self._inbox}*", cb=self._on_ack)
        self._resender = asyncio.create_task(self._resend_loop(), name="nats-publisher:resend")
        self._settled()

    async def aclose(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resender
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
        if self.unconfirmed:
            log.error("publisher.closed_unconfirmed", unconfirmed=self.unconfirmed)

    async def send(self, ticks: Sequence[MarketTick]) -> None:
        subjects = self._subjects
        for tick in ticks:
            while self.unconfirmed >= self._window:
                self._room.clear()
                await self._room.wait()
            subject = subjects.get((tick.exchange, tick.symbol))
            if subject is None:
                subject = subjects[tick.exchange, tick.symbol] = wire.subject(
                    self._prefix, tick.exchange, tick.symbol
                )
            outgoing = _Outgoing(subject, wire.encode(tick), {wire.MSG_ID_HEADER: wire.message_id(tick)})
            self.stats.published += 1
            await self._publish(outgoing)

    async def flush(self) -> None:
        while self.unconfirmed:
            self._idle.clear()
            await self._idle.wait()

    async def _publish(self, outgoing: _Outgoing) -> None:
        token = next(self._tokens)
        outgoing.sent_at = time.monotonic()
        self._awaiting[token] = outgoing
        self._idle.clear()
        try:
            await self._client.publish(
                outgoing.subject, outgoing.payload, reply=f"{self._inbox}{token}", headers=outgoing.headers
            )
        except nats.errors.Error as e:  # not connected and the client's buffer full, or closed
            if self._awaiting.pop(token, None) is not None:
                self._failed(outgoing, RetryReason.UNSENT, f"{type(e).__name__}: {e}")

    async def _on_ack(self, message: Msg) -> None:
        try:
            token = int(message.subject[len(self._inbox) :])
        except ValueError:
            return
        outgoing = self._awaiting.pop(token, None)
        if outgoing is None:  # an ack that came after its tick was given up on and sent again
            return
        ack = _read_ack(message.data)
        if ack.error is not None:
            error = ack.error
            detail = f"{error.description} (code {error.code}, err_code {error.err_code})"
            self._failed(outgoing, RetryReason.REFUSED, detail)
            return
        if self._failures:
            log.info("publisher.recovered", retries=self.stats.retries, unconfirmed=self.unconfirmed)
            self._failures = 0
        if ack.duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.stored += 1
        self._settled()

    def _failed(self, outgoing: _Outgoing, reason: RetryReason, detail: str) -> None:
        if not self._failures:
            log.warning("publisher.retrying", subject=outgoing.subject, reason=reason, error=detail)
        self._failures += 1
        self.stats.retried[reason] += 1
        self._retrying.append(outgoing)
        self._wake.set()

    def _settled(self) -> None:
        unconfirmed = self.unconfirmed
        if unconfirmed < self._window:
            self._room.set()
        if not unconfirmed:
            self._idle.set()

    async def _resend_loop(self) -> None:
        """Give up waiting for acks that are late, and publish the failed ticks again."""
        while True:
            self._expire(time.monotonic())
            if self._retrying:
                delay = min(self._retry_initial * 2 ** min(self._failures - 1, 30), self._retry_max)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                due, self._retrying = self._retrying, deque()
                for outgoing in due:
                    await self._publish(outgoing)
                continue
            self._wake.clear()
            oldest = next(iter(self._awaiting.values()), None)
            wait = (
                self._ack_timeout if oldest is None else oldest.sent_at + self._ack_timeout - time.monotonic()
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    def _expire(self, now: float) -> None:
        awaiting = self._awaiting
        while awaiting:
            token, outgoing = next(iter(awaiting.items()))
            if now - outgoing.sent_at < self._ack_timeout:
                return
            del awaiting[token]
            self._failed(outgoing, RetryReason.TIMEOUT, f"no ack within {self._ack_timeout} s")


def _read_ack(data: bytes) -> _PubAck:
    """The server's answer; one with an ``error`` where it did not store the tick."""
    if not data:
        return _PubAck(error=_ApiError(description="no responders: no stream takes this subject"))
    try:
        return _pub_ack.decode(data)
    except msgspec.DecodeError as e:
        return _PubAck(error=_ApiError(description=f"unreadable ack: {e}"))
