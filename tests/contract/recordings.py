"""Real exchange recordings as they were received, and a server that sends them again byte for byte.

The recordings are cryptofeed's raw-data recorder output (``tests/fixtures/README.md``): one record
a line, ``<url> <-> <ts>`` opens the connection, ``<ts>: <payload>`` is one frame received (split
on the first ``": "``: payloads contain more), ``<url> <- <ts>: <payload>`` one the recorder sent,
``<url> -> <ts>: <body>`` a REST response and ``configuration: ...`` the recorder's settings.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_TIMESTAMP = re.compile(rb"\d+\.\d+")


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded WebSocket connection: where it went, what was sent on it and what came back."""

    url: str
    """The URL of the connection line (Binance's names the streams)."""
    sent: tuple[bytes, ...]
    """Frames the recorder sent (OKX's subscribe requests), as recorded."""
    frames: tuple[bytes, ...]
    """Every frame received, exactly as recorded, in order."""


def read_recording(path: Path) -> Recording:
    url, sent, frames = "", [], []
    for line in path.read_bytes().split(b"\n"):
        head, separator, payload = line.partition(b": ")
        if separator and _TIMESTAMP.fullmatch(head):
            frames.append(payload)
        elif separator and b" <- " in head:
            sent.append(payload)
        elif b" <-> " in line and not url:
            url = line.split(b" <-> ", 1)[0].decode()
    return Recording(url, tuple(sent), tuple(frames))


class ReplayServer:
    """A WebSocket server on 127.0.0.1 that sends each connection a recording's frames, as recorded.

    Each frame goes out as one text frame holding the recorded bytes, uncompressed: nothing is
    decoded or encoded again on the way. With ``after_request`` it first waits for the client's
    first message (a venue that subscribes by a request, not by the URL). The connection then
    stays open, silent, until the client leaves; a second connection gets the whole recording again.
    """

    def __init__(self, recording: Recording, *, after_request: bool) -> None:
        self._recording = recording
        self._after_request = after_request
        self._server: Server | None = None
        self.paths: list[str] = []
        """The request target of every connection."""
        self.received: list[str | bytes] = []
        """Every message the clients sent."""
        self.replayed = 0
        """Connections that were sent the whole recording."""

    @property
    def port(self) -> int:
        assert self._server is not None, "the replay server is not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> ReplayServer:
        self._server = await serve(self._session, "127.0.0.1", 0, compression=None, ping_interval=None)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _session(self, connection: ServerConnection) -> None:
        self.paths.append(connection.request.path if connection.request else "")
        try:
            if self._after_request:
                self.received.append(await connection.recv())
            for frame in self._recording.frames:
                await connection.send(frame, text=True)
            self.replayed += 1
            async for message in connection:
                self.received.append(message)
        except ConnectionClosed:
            pass
