"""A TCP proxy on 127.0.0.1 that can cut the line: a network partition for one client."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards connections to 127.0.0.1:`target_port`. While `partitioned`, bytes stop flowing
    both ways and nothing is closed: calls through it hang as they would behind a dead link."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.partitioned = False
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def partition(self) -> None:
        self.partitioned = True
        self._healed.clear()

    def heal(self) -> None:
        self.partitioned = False
        self._healed.set()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                await self._healed.wait()
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
