"""What an application's message handler may do: the deployment's sends, as one small object.

A handler declared ``async def handler(user_id, session_id, data, *, gateway)`` is given this
(``gateway.serving.serve``, ``create_app``); one without the ``gateway`` keyword is called as
before. Each method is the REST API's operation without HTTP: the same fan-out over the
instances, the same answers (``Delivery``) and errors (``UserNotConnectedError`` when nobody
holds the user, ``DeploymentUnavailable`` when the others cannot be reached).
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

from gateway.cluster.operation import Delivery

if TYPE_CHECKING:
    from gateway.cluster.deployment import Deployment, DurableDelivery
    from gateway.instance.service import MessageHandler


class Gateway:
    def __init__(self, deployment: Deployment) -> None:
        self._deployment = deployment

    async def send(self, user_id: str, payload: dict[str, Any]) -> Delivery:
        """A JSON object to every socket of the user, on whichever instances hold them."""
        return await self._deployment.send(user_id, payload)

    async def send_durable(self, user_id: str, payload: dict[str, Any]) -> DurableDelivery:
        """Stored in the user's stream first, then delivered like ``send``."""
        return await self._deployment.send_durable(user_id, payload)

    async def broadcast(self, payload: dict[str, Any], exclude_user: str | None = None) -> Delivery:
        """To every socket of the deployment, but ``exclude_user``'s."""
        return await self._deployment.broadcast(payload, exclude_user)

    async def room_send(self, room: str, payload: dict[str, Any]) -> Delivery:
        """To every member socket of the room, on every instance."""
        return await self._deployment.room_send(room, payload)

    def rooms_of(self, session_id: str) -> list[str]:
        """The rooms a socket of this instance is in (a handler's socket always is here)."""
        return self._deployment.service.rooms.rooms_of_session(session_id)


def bind(handler: MessageHandler, gateway: Gateway) -> MessageHandler:
    """The handler as the socket edge calls it: given ``gateway`` when it asks for it."""
    try:
        wants = "gateway" in inspect.signature(handler).parameters
    except (TypeError, ValueError):  # a callable without a signature: as before
        wants = False
    return functools.partial(handler, gateway=gateway) if wants else handler
