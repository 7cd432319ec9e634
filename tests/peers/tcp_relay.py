"""A TCP relay on loopback whose connections a test can cut (a flaky link between two real peers)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    """Relays every connection to ``127.0.0.1:upstream_port``; ``cut()`` drops the current ones
    (both sides see the connection end, as when an LTE link or a Wi-Fi bridge goes away)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_w}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self._writers -= {writer, up_w}
            writer.close()
            up_w.close()

    def cut(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    async def __aenter__(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

