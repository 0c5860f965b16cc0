"""A minimal HTTP/1.1 keep-alive client over asyncio streams, for the latency phase.

The latency phase sends hundreds of small requests a second from the same two cores the
services run on. httpx spends about a millisecond of CPU per request, enough to take most
of a core and delay the very answers being timed; this client spends a small fraction of
that. It speaks only what the services answer: responses with a Content-Length.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Self

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# uvicorn closes connections idle for 5 s; don't reuse one that may be closing.
MAX_IDLE_S = 3.0


class RawHttpError(RuntimeError):
    """The server closed the connection or answered something this client cannot read."""


class RawHttp:
    def __init__(self, host: str, port: int, *, authorization: str = "") -> None:
        self.host, self.port = host, port
        self.authorization = authorization
        self._idle: list[tuple[float, Connection]] = []
        self._open: set[asyncio.StreamWriter] = set()

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.request("GET", path)

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        return await self.request("POST", path, body, content_type)

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> tuple[int, bytes]:
        """(status, body). A kept-alive connection the server closed is retried once."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if self.authorization:
            head += f"Authorization: {self.authorization}\r\n"
        message = head.encode() + b"\r\n" + body
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange(connection, message)
            except (RawHttpError, ConnectionError):
                pass  # the server closed it meanwhile: once more on a new connection
        return await self._exchange(await self._connect(), message)

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            since, connection = self._idle.pop()
            if now - since < MAX_IDLE_S:
                return connection
            self._close(connection[1])
        return None

    async def _exchange(self, connection: Connection, message: bytes) -> tuple[int, bytes]:
        reader, writer = connection
        try:
            writer.write(message)
            status, length = await _read_head(reader)
            body = await reader.readexactly(length)
        except BaseException:
            self._close(writer)
            raise
        self._idle.append((time.monotonic(), connection))
        return status, body

    async def _connect(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._open.add(writer)
        return reader, writer

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in list(self._open):
            self._close(writer)
        self._idle.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    status_line = await reader.readline()
    if not status_line:
        raise RawHttpError("connection closed by the server")
    status, length = int(status_line.split()[1]), None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RawHttpError("chunked responses are not supported")
    if length is None:
        raise RawHttpError("response without Content-Length")
    return status, length
