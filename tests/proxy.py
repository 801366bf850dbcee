"""A round-robin TCP proxy standing in for Cloud Run's front end in tests and benchmarks.

Each new connection goes to the next backend in turn, with no stickiness: an HTTP request (on a
fresh connection) and a WebSocket land on whichever instance is next, as on a service URL.
Bytes are copied both ways unchanged, so HTTP and WebSocket pass alike.

``python -m tests.proxy PORT BACKEND_PORT...`` runs one on 127.0.0.1; it prints ``ready`` once
listening and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
from collections.abc import Sequence

CHUNK = 65_536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, backends: Sequence[int], host: str = "127.0.0.1") -> asyncio.Server:
    """Listen on ``host:port`` and spread connections over ``backends`` (ports on ``host``)."""
    turn = itertools.cycle(backends)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # A backend that refuses (a killed instance) is skipped, as a front end with health
        # checks would; with none left the client's connection is dropped.
        for _ in backends:
            try:
                server_r, server_w = await asyncio.open_connection(host, next(turn))
                break
            except OSError:
                continue
        else:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    return await asyncio.start_server(handle, host, port, backlog=4096)


async def _main(port: int, backends: list[int]) -> None:
    server = await serve(port, backends)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print("usage: python -m tests.proxy PORT BACKEND_PORT...", file=sys.stderr)
        sys.exit(2)
    asyncio.run(_main(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
