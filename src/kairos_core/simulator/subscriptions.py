"""One market-stream connection's streams, and Binance's live requests that change them.

A client may send, as text JSON, ``{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}``
(also ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, and ``SET_PROPERTY``/``GET_PROPERTY`` for the
``combined`` framing) and gets ``{"result":...,"id":1}`` or ``{"code":2,"msg":"...","id":1}``.
Error codes as Binance documents them: 0 unknown property, 1 a property value that is not a
boolean, 2 an invalid request, 3 invalid JSON. A connection listens to at most ``MAX_STREAMS``
streams, as on Binance; a SUBSCRIBE past it is refused whole with
``{"error":{"code":2,"msg":"..."},"id":1}`` (Binance documents the limit, not that reply: the code
and wording are ours). An invalid stream name gets that nested shape too, as the live server sends
it (``{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}`` in a client's log),
where Binance's table of errors shows the flat one. The request ``id`` may be what Binance accepts:
a 64-bit signed integer, an alphanumeric string of at most 36 characters (hyphens taken too: 36 is
a UUID's length), or ``null``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_STREAM = re.compile(r"([a-z0-9]+)@([A-Za-z0-9_@]+)")  # btcusdt@aggTrade, btcusdt@depth@100ms
_ID_RANGE = range(-(2**63), 2**63)
_STRING_ID = re.compile(r"[A-Za-z0-9-]{1,36}")  # "alphanumeric, at most 36": a UUID's length, so hyphens too
_UNKNOWN_PROPERTY, _NOT_BOOLEAN, _INVALID_REQUEST, _INVALID_JSON = 0, 1, 2, 3
MAX_STREAMS = 1024
"""Streams one connection may listen to (Binance's spot limit)."""
_encoder = msgspec.json.Encoder()

RequestId = int | str | None


class _Refused(Exception):
    def __init__(self, code: int, message: str, *, nested: bool = False) -> None:
        self.code = code
        self.message = message
        self.nested = nested
        """Reply as ``{"error":{"code":...,"msg":...},"id":...}``."""


class Subscriptions:
    """The streams one connection listens to, changed by the client's requests as Binance does.

    ``symbols`` are the symbols whose aggTrade frames the connection receives; other streams
    (``btcusdt@depth``) are accepted and listed but carry nothing here. ``combined`` says whether
    frames go out as ``{"stream":...,"data":...}`` or as the ``data`` object alone. A SUBSCRIBE
    that would take it past ``max_streams`` is refused; a handshake past it is the server's to
    refuse (``too_many``).
    """

    def __init__(
        self,
        listed: Iterable[str],
        streams: Iterable[str] = (),
        *,
        combined: bool,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.combined = combined
        self.max_streams = max_streams
        self.symbols: frozenset[str] = frozenset()
        self._listed = frozenset(listed)
        self._streams = dict.fromkeys(streams)  # a dict keeps subscription order, without repeats
        self._streams_changed()

    @classmethod
    def for_target(
        cls, target: str, listed: Iterable[str], max_streams: int = MAX_STREAMS
    ) -> Subscriptions | None:
        """What a handshake to ``target`` opens with; None if it is not a stream path.

        ``/ws`` and ``/ws/<stream>`` are raw, ``/stream`` and ``/stream?streams=a/b`` combined.
        """
        url = urlsplit(target)
        path = url.path.rstrip("/")
        if path == "/stream":
            streams = parse_qs(url.query).get("streams", [""])[0]
            return cls(listed, filter(None, streams.split("/")), combined=True, max_streams=max_streams)
        if path == "/ws":
            return cls(listed, combined=False, max_streams=max_streams)
        stream = path.removeprefix("/ws/")
        if stream != path and "/" not in stream:
            return cls(listed, (stream,), combined=False, max_streams=max_streams)
        return None

    @property
    def too_many(self) -> bool:
        """Past ``max_streams``: only a handshake's URL can ask for that many."""
        return len(self._streams) > self.max_streams

    def answer(self, message: str | bytes) -> bytes:
        """Carry out one client request; the reply to send back."""
        request_id: RequestId = None
        try:
            request = _decode(message)
            request_id = _request_id(request)
            result = self._carry_out(request, request.get("params", []))
        except _Refused as e:
            if e.nested:
                return _encoder.encode({"error": {"code": e.code, "msg": e.message}, "id": request_id})
            return _encoder.encode({"code": e.code, "msg": e.message, "id": request_id})
        return _encoder.encode({"result": result, "id": request_id})

    def _carry_out(self, request: dict[str, Any], params: Any) -> Any:
        method = request.get("method")
        if method == "SUBSCRIBE":
            added = dict.fromkeys(self._stream_names(params))
            listening = len(self._streams.keys() | added.keys())
            if listening > self.max_streams:
                raise _Refused(
                    _INVALID_REQUEST,
                    f"Invalid request: a connection listens to at most {self.max_streams} streams; "
                    f"this would make {listening}",
                    nested=True,
                )
            self._streams.update(added)
            self._streams_changed()
        elif method == "UNSUBSCRIBE":
            for stream in self._stream_names(params):
                self._streams.pop(stream, None)
            self._streams_changed()
        elif method == "LIST_SUBSCRIPTIONS":
            _expect_params(params, 0)
            return list(self._streams)
        elif method == "SET_PROPERTY":
            _expect_params(params, 2)
            _combined_property(params[0])
            if not isinstance(params[1], bool):
                raise _Refused(_NOT_BOOLEAN, "Invalid value type: expected Boolean")
            self.combined = params[1]
        elif method == "GET_PROPERTY":
            _expect_params(params, 1)
            _combined_property(params[0])
            return self.combined
        elif method is None:
            raise _Refused(_INVALID_REQUEST, "Invalid request: missing field `method`")
        else:
            expected = ", ".join(f"`{m}`" for m in _METHODS)
            raise _Refused(
                _INVALID_REQUEST, f"Invalid request: unknown variant `{method}`, expected one of {expected}"
            )
        return None

    def _stream_names(self, params: Any) -> list[str]:
        """``params`` checked whole before any of it is applied, so a refused request changes nothing."""
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise _Refused(
                _INVALID_REQUEST,
                'Invalid request: params must be a list of stream names, e.g. ["btcusdt@aggTrade"]',
            )
        for stream in params:
            match = _STREAM.fullmatch(stream)
            if match is None:
                raise _Refused(
                    _INVALID_REQUEST,
                    f"Invalid request: invalid stream name {stream!r}: use <lowercase symbol>@<stream type>, "
                    "e.g. btcusdt@aggTrade",
                    nested=True,
                )
            if match[1] not in self._listed:
                listed = ", ".join(sorted(self._listed))
                raise _Refused(
                    _INVALID_REQUEST, f"Invalid request: symbol {match[1]!r} is not listed (listed: {listed})"
                )
        return params

    def _streams_changed(self) -> None:
        self.symbols = frozenset(
            symbol for symbol, _, kind in (s.partition("@") for s in self._streams) if kind == "aggTrade"
        )


def _decode(message: str | bytes) -> dict[str, Any]:
    try:
        request = msgspec.json.decode(message)
    except (msgspec.DecodeError, UnicodeError) as e:
        raise _Refused(_INVALID_JSON, f"Invalid JSON: {e}") from None
    if not isinstance(request, dict):
        raise _Refused(_INVALID_REQUEST, "Invalid request: a request must be a JSON object")
    return request


def _request_id(request: dict[str, Any]) -> RequestId:
    """The request's ``id`` if Binance would take it: it must be there, ``null`` included."""
    request_id = request.get("id", ...)
    if (
        request_id is None
        or (isinstance(request_id, str) and _STRING_ID.fullmatch(request_id))
        or (isinstance(request_id, int) and not isinstance(request_id, bool) and request_id in _ID_RANGE)
    ):
        return request_id
    raise _Refused(_INVALID_REQUEST, "Invalid request: request ID must be an unsigned integer")


def _expect_params(params: Any, count: int) -> None:
    if not isinstance(params, list):
        raise _Refused(_INVALID_REQUEST, "Invalid request: params must be a list")
    if len(params) > count:
        raise _Refused(_INVALID_REQUEST, "Invalid request: too many parameters")
    if len(params) < count:
        raise _Refused(_INVALID_REQUEST, f"Invalid request: expected {count} parameters, got {len(params)}")


def _combined_property(name: Any) -> None:
    if not isinstance(name, str):
        raise _Refused(_INVALID_REQUEST, "Invalid request: property name must be a string")
    if name != "combined":
        raise _Refused(_UNKNOWN_PROPERTY, "Unknown property")
