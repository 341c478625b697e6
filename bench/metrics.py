"""What metrics cost: the hot path with latency sampling off and on, then end to end with the
metrics port on and off in the same run.

End to end, the simulator (``simulate --bench``) and the client run in separate processes on
separate cores, as in ``bench/e2e.py``. The client is the pipeline the service runs in front of
its consumers: the Binance feed -> TickCounter -> BroadcastBus -> four counting subscribers.
"Off" is that pipeline as built without ``--metrics-port``; "on" samples 1 tick in 64 into the
latency histograms and serves ``/metrics``, which this process scrapes twice a second (Prometheus
scrapes every 15 s by default). Rounds alternate off and on; the ratio is of CPU per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from e2e import CLIENT_CORE, SYMBOLS, Simulator, simulator
from kairos_core.adapters.inbound.feed_handler.binance import BinanceFeedHandler
from kairos_core.adapters.inbound.observability.prometheus import metrics_registry
from kairos_core.adapters.inbound.observability.server import AiohttpStatusServer
from kairos_core.application.bus import BroadcastBus, Subscription
from kairos_core.application.status import ServiceStatusReader
from kairos_core.application.tick_counter import TickCounter
from kairos_core.bootstrap.logging import configure_logging
from kairos_core.domain import Lagged, MarketTick
from kairos_core.settings import LogFormat, LogLevel
from run import FIXTURE, Benchmark, Section, load_frames, measure, parse_ticks, print_section

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EVERY = 64
SUBSCRIBERS = 4
COUNT = 200_000
ROUNDS = 5
SCRAPE_EVERY = 0.5
RATIO_TARGET = 1.03


def counter_into_bus(ticks: Sequence[MarketTick], sample_every: int) -> Callable[[int], int]:
    """TickCounter -> bus with four ordinary subscribers drained after each pass (not timed)."""
    bus = BroadcastBus(capacity=len(ticks), sample_every=sample_every)
    subscriptions = [bus.subscribe(f"consumer-{i}") for i in range(SUBSCRIBERS)]
    publish = TickCounter(bus, sample_every=sample_every).publish

    def timed(loops: int) -> int:
        elapsed = 0
        for _ in range(loops):
            start = time.perf_counter_ns()
            for tick in ticks:
                publish(tick)
            elapsed += time.perf_counter_ns() - start
            for subscription in subscriptions:
                while subscription.try_recv() is not None:
                    pass
        return elapsed

    return timed


def reading(ticks: Sequence[MarketTick], sample_every: int) -> Callable[[int], int]:
    """Four subscribers reading every tick with ``try_recv`` (publishing not timed)."""
    bus = BroadcastBus(capacity=len(ticks), sample_every=sample_every)
    subscriptions = [bus.subscribe(f"consumer-{i}") for i in range(SUBSCRIBERS)]

    def timed(loops: int) -> int:
        elapsed = 0
        for _ in range(loops):
            for tick in ticks:
                bus.publish(tick)
            start = time.perf_counter_ns()
            for subscription in subscriptions:
                while subscription.try_recv() is not None:
                    pass
            elapsed += time.perf_counter_ns() - start
        return elapsed

    return timed


def hot_path_section(ticks: Sequence[MarketTick]) -> Section:
    benchmarks = []
    for every, label in ((0, "sampling off"), (SAMPLE_EVERY, f"sampling 1 in {SAMPLE_EVERY}")):
        benchmarks.append(
            Benchmark(
                label=f"TickCounter -> bus, per tick, {label}",
                timed=counter_into_bus(ticks, every),
                ops_per_loop=len(ticks),
            )
        )
        benchmarks.append(
            Benchmark(
                label=f"{SUBSCRIBERS} x try_recv, per tick, {label}",
                timed=reading(ticks, every),
                ops_per_loop=len(ticks),
            )
        )
    return Section(title="Hot path with the metrics counters (4 subscribers)", benchmarks=benchmarks)


async def count_ticks(subscription: Subscription, count: int) -> int:
    """Reads until ``count`` ticks arrived or were lost; the ticks lost."""
    received = lost = 0
    while received + lost < count:
        try:
            await subscription.recv()
        except Lagged as e:
            lost += e.missed
            continue
        received += 1
    return lost


async def client(port: int, count: int, metrics_port: int | None) -> dict[str, float]:
    sample_every = SAMPLE_EVERY if metrics_port is not None else 0
    bus = BroadcastBus(sample_every=sample_every)
    counter = TickCounter(bus, sample_every=sample_every)
    subscriptions = [bus.subscribe(f"consumer-{i}") for i in range(SUBSCRIBERS)]
    feed = BinanceFeedHandler(counter, SYMBOLS.split(","), url=f"ws://127.0.0.1:{port}/stream", rest_url=None)
    server = None
    if metrics_port is not None:
        status = ServiceStatusReader(bus=bus, counter=counter, feeds=[feed])
        server = AiohttpStatusServer(status, metrics_registry(status), host="127.0.0.1", port=metrics_port)
        await server.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    feeding = asyncio.create_task(feed.start())
    lost = await asyncio.gather(*(count_ticks(s, count) for s in subscriptions))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await feed.stop()
    await feeding
    if server is not None:
        await server.stop()
    return {"cpu_s": cpu, "wall_s": wall, "lost": sum(lost)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Scraper(threading.Thread):
    """GETs ``/metrics`` every ``SCRAPE_EVERY`` seconds until stopped, as Prometheus would."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.done = threading.Event()
        self.scrapes = 0
        self.last = ""

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    self.last = answer.read().decode()
                    self.scrapes += 1
            except OSError:
                pass  # not serving yet
            self.done.wait(SCRAPE_EVERY)


def client_run(sim: Simulator, metrics: bool) -> tuple[float, int, int]:
    """CPU µs per message, ticks lost, scrapes answered."""
    command = ["taskset", "-c", CLIENT_CORE, sys.executable, __file__, "--client", "--port", str(sim.port)]
    command += ["--count", str(COUNT)]
    scraper = None
    if metrics:
        metrics_port = free_port()
        command += ["--metrics-port", str(metrics_port)]
        scraper = Scraper(metrics_port)
        scraper.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    finally:
        if scraper is not None:
            scraper.done.set()
            scraper.join()
    result = json.loads(done.stdout)
    if scraper is not None and "kairos_ticks_total" not in scraper.last:
        raise RuntimeError("the metrics port answered no scrape with kairos_ticks_total")
    return result["cpu_s"] / COUNT * 1e6, int(result["lost"]), 0 if scraper is None else scraper.scrapes


def end_to_end() -> None:
    print(
        f"\nEnd to end, metrics off and on: {COUNT:,} frames per run, {ROUNDS} rounds alternating, "
        f"{SUBSCRIBERS} subscribers, /metrics scraped every {SCRAPE_EVERY:g} s while on"
    )
    off: list[float] = []
    on: list[float] = []
    lost = scrapes = 0
    with simulator("--count", str(COUNT)) as sim:
        for _ in range(ROUNDS):
            cpu, missed, _ = client_run(sim, metrics=False)
            off.append(cpu)
            lost += missed
            cpu, missed, scraped = client_run(sim, metrics=True)
            on.append(cpu)
            lost += missed
            scrapes += scraped
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    ratio = statistics.median(ratios)
    print(f"  CPU µs per message, metrics off: best {min(off):.2f}, median {statistics.median(off):.2f}")
    print(f"  CPU µs per message, metrics on:  best {min(on):.2f}, median {statistics.median(on):.2f}")
    print(
        f"  on / off, median of rounds: {ratio:.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"best on / best off {min(on) / min(off):.3f}; target ≤ {RATIO_TARGET} "
        f"{'PASS' if ratio <= RATIO_TARGET else 'MISS'}"
    )
    print(f"  scrapes answered: {scrapes}; ticks lost by the subscribers: {lost}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", action="store_true", help="run one client (used by the benchmark itself)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args()
    if args.client:
        configure_logging(LogFormat.JSON, LogLevel.WARNING, stream=sys.stderr)  # stdout carries the result
        json.dump(asyncio.run(client(args.port, args.count, args.metrics_port)), sys.stdout)
        return
    ticks = parse_ticks(load_frames(FIXTURE))
    section = hot_path_section(ticks)
    print_section(section, measure(section.benchmarks))
    end_to_end()


if __name__ == "__main__":
    main()
