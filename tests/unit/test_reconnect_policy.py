"""The reconnect policy: capped exponential backoff with jitter, reset, and when to give up."""

from __future__ import annotations

import random

import pytest

from kairos_core.adapters.inbound.feed_handler.connection import HandshakeRejected
from kairos_core.adapters.inbound.feed_handler.reconnect import ReconnectPolicy
from kairos_core.domain import FeedDisconnected, FeedRefused

URL = "wss://stream.binance.test/stream"
HINT = "use --binance-url for another endpoint"
DROPPED = FeedDisconnected("connection closed: code 1006")
BRIEF = 0.1
"""Seconds of uptime well under ``stable_after``: the connection did not stay up."""


def policy(
    seed: int = 7, *, initial_delay: float = 0.5, max_delay: float = 30.0, stable_after: float = 30.0
) -> ReconnectPolicy:
    return ReconnectPolicy(
        initial_delay=initial_delay, max_delay=max_delay, stable_after=stable_after, rng=random.Random(seed)
    )


def rejected(status: int) -> HandshakeRejected:
    return HandshakeRejected(status, URL)


def ceilings(count: int, initial: float = 0.5, cap: float = 30.0) -> list[float]:
    return [min(cap, initial * 2**attempt) for attempt in range(count)]


def assert_within_jitter(delays: list[float], expected_ceilings: list[float]) -> None:
    assert len(delays) == len(expected_ceilings)
    for delay, ceiling in zip(delays, expected_ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling, (delay, ceiling)


def test_delays_grow_exponentially_within_half_to_full_ceiling() -> None:
    backoff = policy()

    delays = [backoff.connection_ended(DROPPED, BRIEF, HINT) for _ in range(6)]

    assert_within_jitter(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0])


def test_delays_are_capped_at_max_delay() -> None:
    backoff = policy()

    delays = [backoff.connection_ended(DROPPED, BRIEF, HINT) for _ in range(40)]

    assert_within_jitter(delays, ceilings(40))
    assert max(delays) <= 30.0
    assert all(delay >= 15.0 for delay in delays[6:])


def test_custom_initial_and_max_delay() -> None:
    backoff = policy(initial_delay=1.0, max_delay=5.0)

    delays = [backoff.connection_ended(DROPPED, BRIEF, HINT) for _ in range(6)]

    assert_within_jitter(delays, [1.0, 2.0, 4.0, 5.0, 5.0, 5.0])


def test_jitter_comes_from_the_given_random_source() -> None:
    first, second, other = policy(seed=1), policy(seed=1), policy(seed=2)

    run = [first.connection_ended(DROPPED, BRIEF, HINT) for _ in range(10)]

    assert run == [second.connection_ended(DROPPED, BRIEF, HINT) for _ in range(10)]
    assert run != [other.connection_ended(DROPPED, BRIEF, HINT) for _ in range(10)]


def test_jitter_spreads_over_the_whole_window() -> None:
    delays = [policy(seed=seed).connection_ended(DROPPED, BRIEF, HINT) for seed in range(200)]

    assert min(delays) < 0.3
    assert max(delays) > 0.45


def test_backoff_resets_after_a_connection_that_stayed_up() -> None:
    backoff = policy(stable_after=30.0)
    for _ in range(5):
        backoff.connection_ended(DROPPED, BRIEF, HINT)

    delay = backoff.connection_ended(DROPPED, 30.0, HINT)
    following = backoff.connection_ended(DROPPED, BRIEF, HINT)

    assert_within_jitter([delay, following], [0.5, 1.0])


def test_backoff_does_not_reset_just_under_stable_after() -> None:
    backoff = policy(stable_after=30.0)
    for _ in range(5):
        backoff.connection_ended(DROPPED, BRIEF, HINT)

    assert_within_jitter([backoff.connection_ended(DROPPED, 29.99, HINT)], [16.0])


@pytest.mark.parametrize(
    ("status", "cause"),
    [(451, "unavailable for legal reasons: a restricted location"), (403, "forbidden")],
)
def test_refusing_status_raises_at_once_naming_cause_and_hint(status: int, cause: str) -> None:
    error = rejected(status)

    with pytest.raises(FeedRefused) as refused:
        policy().connection_ended(error, BRIEF, HINT)

    message = str(refused.value)
    assert f"HTTP {status}" in message
    assert URL in message
    assert cause in message
    assert HINT in message
    assert refused.value.__cause__ is error


@pytest.mark.parametrize("status", [451, 403])
def test_refusing_status_raises_even_after_a_stable_connection(status: int) -> None:
    with pytest.raises(FeedRefused):
        policy().connection_ended(rejected(status), 3600.0, HINT)


@pytest.mark.parametrize("status", [429, 418])
def test_rate_limited_handshakes_are_never_final_and_wait_the_longest_backoff(status: int) -> None:
    backoff = policy()
    delays = [backoff.connection_ended(rejected(status), BRIEF, HINT) for _ in range(20)]

    assert_within_jitter(delays, [backoff.max_delay] * 20)


@pytest.mark.parametrize("status", [400, 404, 410])
def test_other_client_error_is_final_on_the_fifth_in_a_row(status: int) -> None:
    backoff = policy()
    delays = [backoff.connection_ended(rejected(status), BRIEF, HINT) for _ in range(4)]

    with pytest.raises(FeedRefused) as refused:
        backoff.connection_ended(rejected(status), BRIEF, HINT)

    assert_within_jitter(delays, ceilings(4))
    message = str(refused.value)
    assert f"HTTP {status}" in message
    assert "5 times in a row" in message
    assert HINT in message
    assert isinstance(refused.value.__cause__, HandshakeRejected)


def test_max_client_errors_is_configurable() -> None:
    backoff = ReconnectPolicy(rng=random.Random(0), max_client_errors=2)
    backoff.connection_ended(rejected(404), BRIEF, HINT)

    with pytest.raises(FeedRefused, match="2 times in a row"):
        backoff.connection_ended(rejected(404), BRIEF, HINT)


def test_client_error_count_resets_after_a_connection_that_stayed_up() -> None:
    backoff = policy(stable_after=30.0)
    for _ in range(4):
        backoff.connection_ended(rejected(404), BRIEF, HINT)

    backoff.connection_ended(rejected(404), 30.0, HINT)  # first of a new row
    for _ in range(3):
        backoff.connection_ended(rejected(404), BRIEF, HINT)

    with pytest.raises(FeedRefused):
        backoff.connection_ended(rejected(404), BRIEF, HINT)


def test_other_failures_break_a_row_of_client_errors() -> None:
    backoff = policy()
    for _ in range(4):
        backoff.connection_ended(rejected(404), BRIEF, HINT)
    backoff.connection_ended(rejected(503), BRIEF, HINT)

    backoff.connection_ended(rejected(404), BRIEF, HINT)  # the first 4xx of a new row


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_never_raise(status: int) -> None:
    backoff = policy()

    delays = [backoff.connection_ended(rejected(status), BRIEF, HINT) for _ in range(100)]

    assert_within_jitter(delays, ceilings(100))


def test_plain_disconnects_never_raise() -> None:
    backoff = policy()

    delays = [backoff.connection_ended(DROPPED, BRIEF, HINT) for _ in range(100)]

    assert_within_jitter(delays, ceilings(100))


def test_client_errors_back_off_like_any_other_failure() -> None:
    backoff = policy()
    errors: list[FeedDisconnected] = [DROPPED, rejected(404), rejected(503), rejected(404), DROPPED]

    delays = [backoff.connection_ended(error, BRIEF, HINT) for error in errors]

    assert_within_jitter(delays, ceilings(5))
