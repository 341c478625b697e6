"""The NATS connection and the JetStream stream and consumer kairos uses, made or checked at start.

``ensure_stream`` and ``ensure_consumer`` are idempotent: they create what is missing, update
what may be updated in place (retention, replicas, duplicate window; ack wait, max ack pending)
and refuse, with what to do, what may not (another stream's subjects, a storage or retention
policy kairos does not use, a push consumer under our durable name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import api
from nats.js.api import StreamInfo
from nats.js.client import JetStreamContext

from kairos_core.adapters.outbound.nats import wire
from kairos_core.domain import ConfigurationError, Exchange, KairosError, MarketTick

log = structlog.get_logger(__name__)

CONNECT_ATTEMPTS = 5
CONNECT_WAIT = 0.5
"""Seconds between two attempts to reach a server."""


class NatsUnavailable(KairosError):
    """The NATS server could not be reached at start-up, after retries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSpec:
    """The stream of ticks: its name, subjects and retention."""

    name: str = "KAIROS_TICKS"
    subject_prefix: str = "kairos.ticks"
    max_age: float = 7 * 86_400.0
    """Seconds a tick is kept; 0 keeps it until ``max_bytes`` pushes it out."""
    max_bytes: int = -1
    """-1: no bound by size."""
    replicas: int = 1
    duplicate_window: float = 120.0
    """Seconds within which a message id seen before is dropped as a duplicate."""

    @property
    def subjects(self) -> list[str]:
        return [wire.exchange_subjects(self.subject_prefix)]

    def config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=self.subjects,
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSpec:
    """The durable pull consumer that persist nodes share."""

    durable: str = "kairos-persist"
    ack_wait: float = 30.0
    """Seconds a node may hold a batch before it is handed out again; more than the worst commit."""
    max_ack_pending: int = 20_000
    """Ticks out on all nodes, unacknowledged, at most: bounds what the nodes hold in memory."""

    def config(self, stream: StreamSpec) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            max_deliver=-1,
            filter_subject=wire.exchange_subjects(stream.subject_prefix),
        )


async def connect(url: str, *, name: str) -> Client:
    """A connection that, once up, reconnects for ever; ``NatsUnavailable`` if it never comes up."""
    servers = [server.strip() for server in url.split(",") if server.strip()]
    connected: list[Client] = []

    async def disconnected() -> None:
        if connected and not (connected[0].is_closed or connected[0].is_draining):  # not our own close
            log.warning("nats.disconnected", url=_shown(url))

    try:
        client = await nats.connect(
            servers,
            name=name,
            max_reconnect_attempts=CONNECT_ATTEMPTS,  # per server, for this first connect
            reconnect_time_wait=CONNECT_WAIT,
            error_cb=_log_error,
            disconnected_cb=disconnected,
            reconnected_cb=_log_reconnected,
        )
    except (OSError, nats.errors.Error) as e:
        raise NatsUnavailable(
            f"NATS at {_shown(url)} is unreachable after {CONNECT_ATTEMPTS} attempts ({type(e).__name__}: "
            f"{e}): start it (nats-server -js), or fix --nats-url / KAIROS_NATS_URL"
        ) from e
    client.options["max_reconnect_attempts"] = -1  # read by the client at each reconnect
    connected.append(client)
    return client


async def ensure_stream(client: Client, spec: StreamSpec) -> None:
    """Create the stream, or check and update the one there; ``ConfigurationError`` if it cannot serve."""
    js = client.jetstream()
    wanted = spec.config()
    try:
        info = await js.stream_info(spec.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(wanted)
        except nats.js.errors.APIError as e:
            info = await _made_meanwhile(js, spec, e)
        else:
            log.info("nats.stream_created", stream=spec.name, subjects=spec.subjects)
            return
    except nats.js.errors.ServiceUnavailableError as e:
        raise ConfigurationError(
            f"NATS at {_shown_client(client)} has no JetStream ({e.description}): start nats-server with -js"
        ) from e
    current = info.config
    _refuse_mismatch(spec, current)
    changes = {
        field: (getattr(current, field), getattr(wanted, field))
        for field in ("max_age", "max_bytes", "num_replicas", "duplicate_window")
        if not _same(getattr(current, field), getattr(wanted, field))
    }
    if not changes:
        log.info("nats.stream_ready", stream=spec.name)
        return
    try:
        await js.update_stream(_updated(current, wanted))
    except nats.js.errors.APIError as e:
        raise ConfigurationError(
            f"stream {spec.name} cannot be changed to {_changes(changes)} ({e.description}): fix the "
            "--nats-* retention settings, or change the stream with the nats CLI"
        ) from e
    log.warning("nats.stream_updated", stream=spec.name, changes=_changes(changes))


async def ensure_consumer(client: Client, stream: StreamSpec, consumer: ConsumerSpec) -> None:
    """Create the durable pull consumer, or check the one there and update its limits."""
    js = client.jetstream()
    wanted = consumer.config(stream)
    try:
        info = await js.consumer_info(stream.name, consumer.durable)
    except nats.js.errors.NotFoundError:
        await js.add_consumer(stream.name, wanted)
        log.info("nats.consumer_created", stream=stream.name, durable=consumer.durable)
        return
    current = info.config
    fix = f"delete it (nats consumer rm {stream.name} {consumer.durable}) or choose another --nats-durable"
    if current.deliver_subject or current.ack_policy != api.AckPolicy.EXPLICIT:  # a str from the server
        raise ConfigurationError(
            f"consumer {consumer.durable} on stream {stream.name} is not a pull consumer with explicit "
            f"acks: {fix}"
        )
    if current.filter_subject not in (None, "", wanted.filter_subject):
        raise ConfigurationError(
            f"consumer {consumer.durable} on stream {stream.name} reads {current.filter_subject}, not "
            f"{wanted.filter_subject}: {fix}"
        )
    if _same(current.ack_wait, wanted.ack_wait) and current.max_ack_pending == wanted.max_ack_pending:
        log.info("nats.consumer_ready", stream=stream.name, durable=consumer.durable)
        return
    try:
        await js.add_consumer(stream.name, wanted)  # the server updates a durable's editable limits
    except nats.js.errors.APIError as e:
        raise ConfigurationError(
            f"consumer {consumer.durable} on stream {stream.name} cannot take ack wait "
            f"{consumer.ack_wait} s and max ack pending {consumer.max_ack_pending} ({e.description}): {fix}"
        ) from e
    log.warning(
        "nats.consumer_updated",
        durable=consumer.durable,
        ack_wait=consumer.ack_wait,
        max_ack_pending=consumer.max_ack_pending,
    )


async def last_ticks(
    client: Client, stream: StreamSpec, exchange: Exchange, symbols: Iterable[str]
) -> dict[str, MarketTick]:
    """The newest tick of each symbol the stream holds (symbols with none are left out)."""
    js = client.jetstream()
    found: dict[str, MarketTick] = {}
    for symbol in symbols:
        subject = wire.subject(stream.subject_prefix, exchange, symbol)
        try:
            message = await js.get_last_msg(stream.name, subject)
        except nats.js.errors.NotFoundError:
            continue
        try:
            found[symbol] = wire.decode(message.data or b"")
        except msgspec.DecodeError as e:
            log.warning("nats.last_tick_unreadable", subject=subject, error=str(e))
    return found


async def _made_meanwhile(
    js: JetStreamContext, spec: StreamSpec, error: nats.js.errors.APIError
) -> StreamInfo:
    """The stream another node made while we tried to, or what to fix if nobody did."""
    try:
        return await js.stream_info(spec.name)
    except nats.js.errors.NotFoundError:
        raise ConfigurationError(
            f"stream {spec.name} cannot be created ({error.description}): fix the --nats-* settings "
            "(more --nats-replicas than the cluster has servers? subjects another stream takes?)"
        ) from error


def _refuse_mismatch(spec: StreamSpec, current: api.StreamConfig) -> None:
    fix = (
        f"delete it (nats stream rm {spec.name}) if nothing else uses it, or set --nats-stream / "
        "--nats-subject-prefix to a stream of kairos's own"
    )
    if sorted(current.subjects or []) != sorted(spec.subjects):
        raise ConfigurationError(
            f"stream {spec.name} exists with subjects {current.subjects}, kairos needs {spec.subjects}: {fix}"
        )
    for field, wanted in (
        ("retention", api.RetentionPolicy.LIMITS),
        ("storage", api.StorageType.FILE),
        ("discard", api.DiscardPolicy.OLD),
    ):
        found = getattr(current, field)
        if found is not None and found != wanted:  # the server's answer may be the enum or its value
            raise ConfigurationError(
                f"stream {spec.name} exists with {field} {getattr(found, 'value', found)}, kairos needs "
                f"{wanted.value}: {fix}"
            )


def _updated(current: api.StreamConfig, wanted: api.StreamConfig) -> api.StreamConfig:
    return dataclasses.replace(
        current,
        max_age=wanted.max_age,
        max_bytes=wanted.max_bytes,
        num_replicas=wanted.num_replicas,
        duplicate_window=wanted.duplicate_window,
    )


def _same(current: object, wanted: object) -> bool:
    if isinstance(current, float | int) and isinstance(wanted, float | int):
        return abs(current - wanted) < 1e-6
    return current == wanted


def _changes(changes: dict[str, tuple[object, object]]) -> str:
    return ", ".join(f"{field} {old} -> {new}" for field, (old, new) in changes.items())


def _shown(url: str) -> str:
    """``url`` without user info (a token, or a user and password)."""
    return ",".join(server.rpartition("@")[2] if "@" in server else server for server in url.split(","))


def _shown_client(client: Client) -> str:
    server = client.connected_url
    return "?" if server is None else f"{server.hostname}:{server.port}"


async def _log_error(error: Exception) -> None:
    log.warning("nats.error", error=f"{type(error).__name__}: {error}")


async def _log_reconnected() -> None:
    log.info("nats.reconnected")
