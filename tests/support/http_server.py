"""A tiny scripted HTTP/1.1 server on a free loopback port, for webhook tests.

It answers each request with the next `Reply` of its script (the last one repeats) and
keeps every request it received, so a test sees exactly what a real endpoint would.
It understands what httpx sends: Content-Length bodies and keep-alive connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType


@dataclass(frozen=True)
class Reply:
    """One scripted answer; `hang` never answers (until the server stops)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class ScriptedHttpServer:
    """`async with ScriptedHttpServer([Reply(500), Reply(200)]) as server: server.url`."""

    def __init__(self, script: Sequence[Reply]) -> None:
        if not script:
            raise ValueError("the script needs at least one reply")
        self.script = list(script)
        self.requests: list[ReceivedRequest] = []
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/hook"

    async def __aenter__(self) -> ScriptedHttpServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # keep-alive connections outlive close()
            writer.close()
        await self._server.wait_closed()

    def _next_reply(self) -> Reply:
        index = min(len(self.requests) - 1, len(self.script) - 1)
        return self.script[index]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                reply = self._next_reply()
                if reply.hang:
                    await self._stopping.wait()
                    return
                writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, as clients that time out do
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return ReceivedRequest(method, path, headers, body)


def _encode(reply: Reply) -> bytes:
    head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"]
    headers = {"Content-Length": str(len(reply.body)), "Connection": "keep-alive"}
    headers.update(reply.headers)
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body
