"""The kairos-core benchmark: parser, bus and hot-path costs on the recorded Binance frames."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter_ns
from typing import TypeVar

import msgspec
import orjson

from kairos_core.adapters.inbound.feed_handler.binance_wire import AggTrade, parse_frame
from kairos_core.application.bus import BroadcastBus, Subscription
from kairos_core.application.continuity import ContinuityGuard
from kairos_core.application.tick_counter import TickCounter
from kairos_core.domain import Exchange, MarketTick

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/binance/BINANCE-ee25be.0"
AGG_TRADE_MARK = '@aggTrade"'
REPEATS = 15
REPEAT_NS = 300_000_000
CALIBRATION_NS = 50_000_000
SUBSCRIBERS = 4
BATCH = 100
PARSE_TARGET_NS = 2_500  # 400,000 frames/s
PUBLISH_TARGET_NS = 1_000

T = TypeVar("T")
Timed = Callable[[int], int]
"""Runs a workload ``loops`` times; returns the nanoseconds spent in its timed part."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Benchmark:
    """One workload to time and, where the issue sets one, its target in ns per operation."""

    label: str
    timed: Timed
    ops_per_loop: int
    target_ns: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    title: str
    benchmarks: list[Benchmark]


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    best_ns: float
    median_ns: float


class CombinedAggTrade(msgspec.Struct, gc=False):
    """A combined-stream frame typed as the wire module's ``AggTrade``, for the bare decode."""

    stream: str
    data: AggTrade


def load_frames(path: Path) -> list[bytes]:
    """The aggTrade payloads of a cryptofeed recording (``<ts>: <payload>`` lines), as bytes."""
    frames = []
    for line in path.read_text(encoding="utf-8").splitlines():
        _, separator, payload = line.partition(": ")
        if separator and AGG_TRADE_MARK in payload:
            frames.append(payload.encode())
    return frames


def parse_ticks(frames: Sequence[bytes]) -> list[MarketTick]:
    """Every frame parsed once; refuses to go on if one is not a tick (the happy path is timed)."""
    ticks = [parse_frame(frame) for frame in frames]
    ready = [tick for tick in ticks if isinstance(tick, MarketTick)]
    if len(ready) != len(frames):
        raise RuntimeError(f"only {len(ready)} of {len(frames)} recorded frames parse to a tick")
    return ready


def over(step: Callable[[T], object], items: Sequence[T], between: Callable[[], None] | None = None) -> Timed:
    """Timed passes of ``step`` over ``items``; ``between`` runs untimed after each pass."""

    def timed(loops: int) -> int:
        elapsed = 0
        for _ in range(loops):
            start = perf_counter_ns()
            for item in items:
                step(item)
            elapsed += perf_counter_ns() - start
            if between is not None:
                between()
        return elapsed

    return timed


def calibrate(timed: Timed) -> int:
    """How many loops make one repeat last about ``REPEAT_NS``."""
    loops = 1
    while (elapsed := timed(loops)) < CALIBRATION_NS:
        loops *= 2
    return max(1, round(loops * REPEAT_NS / elapsed))


def measure(benchmarks: Sequence[Benchmark]) -> list[Result]:
    """Repeats taken in rounds across all benchmarks, so each one samples the whole run's noise."""
    loops = [calibrate(benchmark.timed) for benchmark in benchmarks]
    samples: list[list[float]] = [[] for _ in benchmarks]
    for _ in range(REPEATS):
        for benchmark, count, taken in zip(benchmarks, loops, samples, strict=True):
            taken.append(benchmark.timed(count) / (count * benchmark.ops_per_loop))
    return [Result(best_ns=min(taken), median_ns=statistics.median(taken)) for taken in samples]


def subscribed_bus(ordinary: int, lossless: int = 0) -> tuple[BroadcastBus, list[Subscription]]:
    bus = BroadcastBus()
    subscriptions = [bus.subscribe(f"ordinary-{i}") for i in range(ordinary)]
    subscriptions += [bus.subscribe(f"lossless-{i}", lossless=True) for i in range(lossless)]
    return bus, subscriptions


def drain(subscriptions: Sequence[Subscription]) -> Callable[[], None]:
    def run() -> None:
        for subscription in subscriptions:
            while subscription.try_recv() is not None:
                pass

    return run


def parse_and_publish(bus: BroadcastBus) -> Callable[[bytes], None]:
    """What a feed handler does per frame: parse, keep ticks, publish."""
    publish = bus.publish

    def step(frame: bytes) -> None:
        tick = parse_frame(frame)
        if isinstance(tick, MarketTick):
            publish(tick)

    return step


async def count(subscription: Subscription) -> int:
    received = 0
    async for _ in subscription:
        received += 1
    return received


async def deliver(batches: Sequence[Sequence[MarketTick]], loops: int) -> int:
    """Publish ``loops`` rounds of ``batches`` to counting subscriber tasks; ns until all have read."""
    bus, subscriptions = subscribed_bus(SUBSCRIBERS)
    publish = bus.publish
    async with asyncio.TaskGroup() as group:
        counters = [group.create_task(count(subscription)) for subscription in subscriptions]
        await asyncio.sleep(0)  # the subscribers start and wait on the bus
        start = perf_counter_ns()
        for _ in range(loops):
            for batch in batches:
                await bus.writable()
                for tick in batch:
                    publish(tick)
                await asyncio.sleep(0)
        bus.close()
    elapsed = perf_counter_ns() - start
    expected = loops * sum(map(len, batches))
    if any(counter.result() != expected for counter in counters):
        raise RuntimeError(f"a subscriber missed ticks: {[c.result() for c in counters]} of {expected}")
    return elapsed


def in_event_loop(batches: Sequence[Sequence[MarketTick]]) -> Timed:
    return lambda loops: asyncio.run(deliver(batches, loops))


def parser_section(frames: Sequence[bytes]) -> Section:
    return Section(
        title="Parser, per frame",
        benchmarks=[
            Benchmark(
                label="parse_frame -> MarketTick (reads the receipt clock)",
                timed=over(parse_frame, frames),
                ops_per_loop=len(frames),
                target_ns=PARSE_TARGET_NS,
            ),
            Benchmark(
                label="orjson.loads (untyped dicts)",
                timed=over(orjson.loads, frames),
                ops_per_loop=len(frames),
            ),
            Benchmark(
                label="msgspec typed decode only (AggTrade)",
                timed=over(msgspec.json.Decoder(CombinedAggTrade).decode, frames),
                ops_per_loop=len(frames),
            ),
        ],
    )


def publish_section(ticks: Sequence[MarketTick]) -> Section:
    ordinary, _ = subscribed_bus(SUBSCRIBERS)
    mixed, subscriptions = subscribed_bus(SUBSCRIBERS - 1, lossless=1)
    lossless = [subscription for subscription in subscriptions if subscription.lossless]
    below_full = ticks[: mixed.capacity // 2]  # drained after each pass, so never saturated
    return Section(
        title=f"Bus publish, per publish (capacity {ordinary.capacity}, subscribers not reading)",
        benchmarks=[
            Benchmark(
                label=f"{SUBSCRIBERS} ordinary subscribers",
                timed=over(ordinary.publish, ticks),
                ops_per_loop=len(ticks),
                target_ns=PUBLISH_TARGET_NS,
            ),
            Benchmark(
                label=f"{SUBSCRIBERS - 1} ordinary + 1 lossless (drained every {len(below_full)})",
                timed=over(mixed.publish, below_full, drain(lossless)),
                ops_per_loop=len(below_full),
                target_ns=PUBLISH_TARGET_NS,
            ),
        ],
    )


def event_loop_section(ticks: Sequence[MarketTick]) -> Section:
    batches = [ticks[i : i + BATCH] for i in range(0, len(ticks) - BATCH + 1, BATCH)]
    benchmark = Benchmark(
        label=f"{SUBSCRIBERS} async-for tasks, batches of {BATCH} + sleep(0)",
        timed=in_event_loop(batches),
        ops_per_loop=BATCH * len(batches),
    )
    return Section(
        title="Bus in the event loop, per tick delivered to all subscribers", benchmarks=[benchmark]
    )


def hot_path_section(frames: Sequence[bytes]) -> Section:
    bus, _ = subscribed_bus(SUBSCRIBERS)
    benchmark = Benchmark(
        label=f"frame -> parse_frame -> publish ({SUBSCRIBERS} subscribers)",
        timed=over(parse_and_publish(bus), frames),
        ops_per_loop=len(frames),
    )
    return Section(title="Hot path, per frame", benchmarks=[benchmark])


class UnusedHistory:
    """A trade history the guard must never need: the ticks below have no gap."""

    exchange = Exchange.BINANCE
    spans_fills = False

    def trades(self, symbol: str, from_id: int, to_id: int | None = None) -> AsyncIterator[list[MarketTick]]:
        raise AssertionError(f"a gap in the benchmark's ticks: {symbol} from {from_id}")


def consecutive(ticks: Sequence[MarketTick]) -> list[MarketTick]:
    """The ticks renumbered so each symbol's ids run without a gap from 1, as a venue sends them."""
    numbers: dict[str, int] = {}
    renumbered = []
    for tick in ticks:
        numbers[tick.symbol] = numbers.get(tick.symbol, 0) + 1
        renumbered.append(tick._replace(trade_id=numbers[tick.symbol]))
    return renumbered


def guard_section(ticks: Sequence[MarketTick]) -> Section:
    """What the gap guard adds in front of the counter and bus, on ids without a gap."""
    continuous = consecutive(ticks)
    restart = dict.fromkeys((tick.symbol for tick in continuous), 0)
    counted, _ = subscribed_bus(SUBSCRIBERS)
    guarded, _ = subscribed_bus(SUBSCRIBERS)
    guard = ContinuityGuard(TickCounter(guarded), UnusedHistory())
    return Section(
        title=f"Gap guard, per tick (ids without a gap, {SUBSCRIBERS} subscribers)",
        benchmarks=[
            Benchmark(
                label="TickCounter -> bus",
                timed=over(TickCounter(counted).publish, continuous),
                ops_per_loop=len(continuous),
            ),
            Benchmark(
                label="ContinuityGuard -> TickCounter -> bus",
                timed=over(guard.publish, continuous, lambda: guard.seed(restart)),
                ops_per_loop=len(continuous),
            ),
        ],
    )


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def cpu_count() -> int | None:
    """What ``nproc`` reports: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def print_header(frames: Sequence[bytes]) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{average:.2f}" for average in os.getloadavg())
    print(f"kairos-core benchmark, {now}")
    print(f"Python {platform.python_version()} ({platform.python_implementation()}), {sys.executable}")
    print(f"{platform.platform()}, {cpu_model()}, nproc {cpu_count()}, load {load}")
    print(f"{len(frames)} recorded aggTrade frames from {FIXTURE.relative_to(ROOT)}")
    print(f"{REPEATS} repeats of ~{REPEAT_NS / 1e9:g} s each, taken in rounds; perf_counter_ns; gc on")
    print("Targets are checked against the best repeat; the median shows the noise.")


def print_section(section: Section, results: Sequence[Result]) -> None:
    print(f"\n{section.title}")
    print(f"  {'':54} {'best µs':>9} {'median µs':>10} {'per second':>12}  {'target':<9} result")
    for benchmark, result in zip(section.benchmarks, results, strict=True):
        target, verdict = "", ""
        if benchmark.target_ns is not None:
            target = f"≤ {benchmark.target_ns / 1000:g} µs"
            verdict = "PASS" if result.best_ns <= benchmark.target_ns else "MISS"
        line = (
            f"  {benchmark.label:54} {result.best_ns / 1000:9.3f} {result.median_ns / 1000:10.3f}"
            f" {1e9 / result.best_ns:12,.0f}  {target:<9} {verdict}"
        )
        print(line.rstrip())


def main() -> None:
    frames = load_frames(FIXTURE)
    ticks = parse_ticks(frames)
    print_header(frames)
    sections = [
        parser_section(frames),
        publish_section(ticks),
        event_loop_section(ticks),
        hot_path_section(frames),
        guard_section(ticks),
    ]
    results = iter(measure([benchmark for section in sections for benchmark in section.benchmarks]))
    for section in sections:
        print_section(section, [next(results) for _ in section.benchmarks])


if __name__ == "__main__":
    main()
