"""A TCP relay that delays one direction: what `tc netem delay` does to a link, for a kernel
without sch_netem (the development machine's: docs/chaos-suite.md).

    python3 delayrelay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_MS [MARK]

Listens on 127.0.0.1:LISTEN_PORT and relays each connection to UPSTREAM_HOST:UPSTREAM_PORT.
Like netem on the client's outgoing packets, each chunk the client sends leaves for the
upstream DELAY_MS after it arrived (in order, none held back by another), the connection's
opening waits DELAY_MS too (the SYN), and answers come back at once. SIGUSR1 sets the delay to
0 for what arrives from then on (the heal: connections already relayed stay up, as they would
when a qdisc is removed); SIGTERM resets every connection it relays, both sides (an RST, so no
client is left waiting on a relay that is gone), and ends the relay.

The upstream sockets carry MARK (SO_MARK) so that the nftables rule sending the client's
connections here can let the relay's own through. Copied to the app hosts and run there by
chaos.actions.delay (Debian's python3, standard library only).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import sys
import time
from collections.abc import Coroutine
from typing import Any

CHUNK = 65536
# SO_LINGER on, 0 s: close() sends an RST and drops what is unsent.
LINGER_RESET = struct.pack("ii", 1, 0)


async def together(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Runs them all until all end; the first to fail cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()


class Relay:
    def __init__(self, upstream: tuple[str, int], delay: float, mark: int = 0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.mark = mark
        self.relayed: set[asyncio.StreamWriter] = set()  # both sides of every open connection

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.upstream)
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to upstream: a reader stamps each chunk, a sender lets it go at stamp + delay."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            while chunk := await reader.read(CHUNK):
                queue.put_nowait((time.monotonic() + self.delay, chunk))
            queue.put_nowait((time.monotonic() + self.delay, b""))

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        await together(read(), send())

    @staticmethod
    async def _direct(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay)
        try:
            upstream_reader, upstream_writer = await self._connect()
        except OSError:
            client_writer.close()
            return
        pair = {client_writer, upstream_writer}
        self.relayed |= pair
        try:
            # Either side failing (reset, refused write) ends both: the client sees what a
            # broken link would show it.
            await together(self._delayed(client_reader, upstream_writer), self._direct(upstream_reader, client_writer))
        except (OSError, RuntimeError):
            pass
        finally:
            self.relayed -= pair
            upstream_writer.close()
            client_writer.close()

    def heal(self) -> None:
        self.delay = 0.0

    def reset(self) -> None:
        """Every relayed connection ended at once with an RST on both sides: a FIN could be
        lost with the redirect that carried it, and a peer that is merely closed gracefully
        may wait for the rest of an answer that never comes."""
        for writer in list(self.relayed):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            writer.transport.abort()
        self.relayed.clear()


async def serve(port: int, relay: Relay) -> None:
    server = await asyncio.start_server(relay.handle, "127.0.0.1", port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, relay.heal)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
        relay.reset()


def main(argv: list[str]) -> int:
    port, host, upstream_port, delay_ms, *mark = argv
    relay = Relay((host, int(upstream_port)), int(delay_ms) / 1000, int(mark[0], 0) if mark else 0)
    asyncio.run(serve(int(port), relay))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
