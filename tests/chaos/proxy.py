"""A loopback TCP proxy whose link can be cut: every connection dropped, new ones refused.

It runs its own asyncio loop on a daemon thread, so that the harness's main thread stays free
to schedule faults. While cut, the listening socket stays open (so no other process can take
the port) but each accepted connection is reset at once, which a client sees as a refused or
broken connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

BUFFER = 1 << 16


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``127.0.0.1:target_port`` until ``close``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.dropped = 0
        self._cut = False
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)

    def start(self) -> TcpProxy:
        """Start listening on a free loopback port (``self.port``)."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(timeout=10)
        return self

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> int:
        """Drop every open connection and refuse new ones; return how many were dropped."""
        return asyncio.run_coroutine_threadsafe(self._set_cut(True), self._loop).result(timeout=10)

    def restore(self) -> None:
        """Accept and forward connections again."""
        asyncio.run_coroutine_threadsafe(self._set_cut(False), self._loop).result(timeout=10)

    def close(self) -> None:
        """Drop everything, stop the loop and its thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ on the loop

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _set_cut(self, cut: bool) -> int:
        self._cut = cut
        if not cut:
            return 0
        dropped = 0
        for pair in list(self._pairs):
            for writer in pair:
                writer.transport.abort()
            dropped += 1
        self._pairs.clear()
        self.dropped += dropped
        return dropped

    async def _shutdown(self) -> None:
        await self._set_cut(True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self._cut:
            client.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), timeout=2.0
            )
        except (OSError, TimeoutError):
            client.transport.abort()
            return
        if self._cut:  # cut while connecting
            client.transport.abort()
            upstream.transport.abort()
            return
        self.connections += 1
        pair = (client, upstream)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(client_reader, upstream), self._pipe(upstream_reader, client))
        finally:
            self._pairs.discard(pair)
            client.transport.abort()
            upstream.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(BUFFER):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
