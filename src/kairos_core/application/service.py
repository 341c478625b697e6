"""The running service: feeds -> bus -> consumers in one TaskGroup, with an ordered shutdown.

Shutdown drains: feeds stop first (no new ticks), then gap repairs finish, then the bus closes,
then every consumer reads what is left and returns. Nothing a feed handed to the bus is dropped on
the way out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from kairos_core.application.bus import BroadcastBus, SubscriberStats, Subscription
from kairos_core.application.consumers import Consumer
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import KairosError, MarketFeedPort, TickRepository

log = structlog.get_logger(__name__)

CONSUMER_RESTART_INITIAL = 0.1
CONSUMER_RESTART_MAX = 10.0
"""Seconds; a consumer that ran this long before crashing starts again from the initial delay."""
CONSUMER_RESTARTS_AFTER_CLOSE = 3
"""Once the bus is closed, a consumer that keeps crashing would hold the shutdown forever."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    ticks: dict[str, int]
    """Ticks received per ``exchange:SYMBOL``."""
    total: int
    stop_reason: str
    consumers: dict[str, SubscriberStats]
    """Each consumer's bus counters as its subscription ended (``lost`` is 0 for lossless ones)."""


class MarketDataService:
    """Runs until ``request_stop``, the ``duration`` elapses, the tick limit is hit or a feed fails.

    A feed failure (``KairosError`` from ``start``) stops the service the same orderly way and is
    raised from ``run`` once everything has drained.
    """

    def __init__(
        self,
        bus: BroadcastBus,
        counter: TickCounter,
        feeds: Sequence[MarketFeedPort],
        consumers: Sequence[Consumer],
        *,
        duration: float | None = None,
        guards: Sequence[ContinuityGuard] = (),
        repository: TickRepository | None = None,
    ) -> None:
        self._bus = bus
        self._guards = guards
        self._repository = repository
        self._counter = counter
        self._feeds = feeds
        self._consumers = consumers
        self._duration = duration
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._failures: list[Exception] = []
        self._consumer_stats: dict[str, SubscriberStats] = {}
        counter.on_limit = lambda: self.request_stop("max-ticks reached")

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def run(self) -> RunSummary:
        await self._resume()
        loop = asyncio.get_running_loop()
        timer = (
            loop.call_later(self._duration, self.request_stop, "duration elapsed") if self._duration else None
        )
        async with asyncio.TaskGroup() as group:
            for consumer in self._consumers:
                subscription = self._bus.subscribe(consumer.name, lossless=consumer.lossless)
                group.create_task(
                    self._run_consumer(consumer, subscription), name=f"consumer:{consumer.name}"
                )
            feed_tasks = [
                group.create_task(self._run_feed(feed), name=f"feed:{feed.exchange}") for feed in self._feeds
            ]
            log.info(
                "service.started",
                feeds=[str(feed.exchange) for feed in self._feeds],
                consumers=len(self._consumers),
            )
            await self._stop.wait()
            log.info("service.stopping", reason=self._stop_reason)
            await asyncio.gather(*(feed.stop() for feed in self._feeds))
            await asyncio.gather(*feed_tasks)
            # Gap repairs publish too: they finish (or are cancelled) before the bus closes.
            await asyncio.gather(*(guard.close() for guard in self._guards))
            self._bus.close()
        if timer is not None:
            timer.cancel()
        summary = RunSummary(
            ticks={
                f"{exchange}:{symbol}": count
                for (exchange, symbol), count in sorted(self._counter.per_symbol.items())
            },
            total=self._counter.total,
            stop_reason=self._stop_reason,
            consumers=dict(self._consumer_stats),
        )
        log.info(
            "service.stopped",
            reason=summary.stop_reason,
            ticks_total=summary.total,
            ticks=summary.ticks,
            refused_after_limit=self._counter.refused,
            consumers={
                name: {"received": stats.received, "lost": stats.lost}
                for name, stats in summary.consumers.items()
            },
        )
        if self._failures:
            raise self._failures[0]
        return summary

    async def _resume(self) -> None:
        """Seed the gap guards with the stored last trade ids, so a restart repairs the downtime."""
        if self._repository is None:
            return
        for guard in self._guards:
            try:
                await guard.resume_from(self._repository)
            except Exception as e:  # storage down at start: stream on, only the downtime stays open
                log.warning("gap.resume_failed", exchange=guard.exchange, error=f"{type(e).__name__}: {e}")

    async def _run_feed(self, feed: MarketFeedPort) -> None:
        try:
            await feed.start()
        except KairosError as e:
            self._failures.append(e)
            log.error("feed.failed", exchange=feed.exchange, error=str(e))
            self.request_stop(f"{feed.exchange} feed failed")
        except Exception as e:  # a bug: still stop in order, so what was accepted is consumed
            self._failures.append(e)
            log.exception("feed.crashed", exchange=feed.exchange)
            self.request_stop(f"{feed.exchange} feed crashed")
        else:
            self.request_stop(f"{feed.exchange} feed ended")

    async def _run_consumer(self, consumer: Consumer, subscription: Subscription) -> None:
        """Run ``consumer``, restarting it on its own subscription after a crash.

        A crash is a bug in that consumer: it is logged with its traceback and the consumer runs
        again after a backoff, so the feeds and the other consumers go on. Its state lives on the
        consumer object, so a restart resumes where it stopped. A consumer that returns early
        must not hold the feeds back: its subscription goes too.
        """
        delay = CONSUMER_RESTART_INITIAL
        crashes_after_close = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    await consumer.run(subscription)
                    return
                except Exception:
                    if self._bus.closed:
                        crashes_after_close += 1
                        if crashes_after_close > CONSUMER_RESTARTS_AFTER_CLOSE:
                            log.exception("consumer.abandoned", consumer=consumer.name)
                            return
                    if time.monotonic() - started > CONSUMER_RESTART_MAX:
                        delay = CONSUMER_RESTART_INITIAL
                    log.exception("consumer.crashed", consumer=consumer.name, restart_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, CONSUMER_RESTART_MAX)
        finally:
            self._consumer_stats[consumer.name] = subscription.stats()
            subscription.close()
