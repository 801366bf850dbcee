"""An application built on the gateway: a client's message ``{"room": ..., "text": ...}``
from a socket that joined that room is sent to every member of the room, on every instance, as
``{"type": "echo", "room": ..., "from": <user>, "text": ...}``.

Run it like ``python -m gateway`` (the same environment: GATEWAY_ADMIN_TOKEN, the emulators'
hosts or GOOGLE_CLOUD_PROJECT, ...)::

    python examples/room_echo.py

``serve`` keeps everything ``python -m gateway`` does (the lean WebSocket edge, bounded
handshakes, token redaction in the logs, the collector's threshold, the library check).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gateway.cluster.handle import Gateway
from gateway.exceptions import ConfigError
from gateway.serving import serve

logger = logging.getLogger("room_echo")


async def echo(user_id: str, session_id: str, data: Any, *, gateway: Gateway) -> None:
    """Relay a room message from one of the room's sockets to all of its members."""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return
    room = data.get("room")
    if room not in gateway.rooms_of(session_id):
        logger.info("user=%s wrote to room %.64r without joining it", user_id, room)
        return
    echoed = {"type": "echo", "room": room, "from": user_id, "text": data["text"][:1000]}
    await gateway.room_send(room, echoed)


if __name__ == "__main__":
    try:
        serve(message_handler=echo)
    except ConfigError as exc:
        sys.exit(f"room_echo: configuration error: {exc}")
