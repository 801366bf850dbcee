"""A plain targeted send decided and delivered without an await, for the answer the HTTP
protocol gives itself (``gateway.edge.inline_send``).

It is the send ``Deployment.send`` would make when nothing in it has to wait: every socket of
the user is on this instance and takes its frame now (no earlier send still waiting on it), and,
with a broker, nothing says another instance holds the user (``Directory.held_here_only``: the
whereabouts last read, or no other live instance, and no arrival announced). Then nothing is
published and nobody is waited for, as in ``SendOp``; the answer is the one ``SendOp.merge``
gives. Any other case returns None and is sent the ordinary way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.cluster.directory import settled
from gateway.cluster.operation import Delivery
from gateway.edge.framing import text_frame
from gateway.exceptions import UserNotConnectedError
from gateway.protocol import messages

if TYPE_CHECKING:
    from gateway.cluster.deployment import Deployment


def send_now(deployment: Deployment, user_id: str, payload: dict[str, Any]) -> Delivery | None:
    """Deliver ``payload`` to the user's sockets here and return the answer, or None when
    deciding it takes an await (then ``Deployment.send``). Raises UserNotConnectedError when
    the instance is alone (no broker) and holds no socket of the user."""
    sockets = deployment.service.registry.sockets_of(user_id)
    alone = deployment.fanout is None
    if not sockets:
        if alone:
            raise UserNotConnectedError(user_id)
        return None  # another instance may hold the user: the member record says
    for conn in sockets:
        if not conn.takes_frame_now():
            return None
    if not alone and not deployment.directory.held_here_only(user_id, settled(sockets)):
        return None
    frame = text_frame(messages.encode(payload))
    for conn in sockets:
        conn.push_frame(frame)
    return Delivery(len(sockets), 1, [deployment.me], [], "instance" if alone else "deployment")
