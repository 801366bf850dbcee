"""``GET /ws/rooms/{room}/presence``: a presence room's members for backends, from this
instance's replicated view (docs/presence.md#for-backends): no scatter over the instances."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.exceptions import NotFoundException

from gateway.instance.service import PresenceService
from gateway.protocol.presence import PresenceMember
from gateway.protocol.rooms import check_room_name
from gateway.web.guards import require_admin


class RoomPresenceResponse(msgspec.Struct):
    room: str
    #: Distinct users in the room across the instances, and their sockets.
    users: int
    connections: int
    members: list[PresenceMember]
    #: The instances whose entries the view holds for the room.
    instances: list[str]


@get("/ws/rooms/{room:str}/presence", guards=[require_admin])
async def ws_room_presence(request: Request[Any, Any, Any], room: str) -> RoomPresenceResponse:
    """The presence room's members with their device counts and info, and its occupancy (404
    when the room is not under a PRESENCE_ROOM_PREFIXES prefix; 400 for an invalid name)."""
    check_room_name(room)
    service: PresenceService = request.app.state.service
    presence = service.presence
    if not presence.is_presence_room(room):
        raise NotFoundException(f"{room!r} is not a presence room (PRESENCE_ROOM_PREFIXES)")
    users, connections = presence.view.occupancy(room)
    return RoomPresenceResponse(
        room, users, connections, presence.view.members(room), presence.view.room_instances(room)
    )


ROUTES = [ws_room_presence]
