"""What every cross-instance operation is made of: the context it works in, whom it waits for,
the receipts it gathers, and the ``Operation`` base each declaration in
``gateway.cluster.operations`` (and ``gateway.cluster.batch``) fills in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, NamedTuple, TypeVar

from gateway.cluster.fanout import Reply, Request

if TYPE_CHECKING:
    from gateway.cluster.directory import Directory
    from gateway.instance.service import PresenceService

Scope = Literal["deployment", "instance"]
R = TypeVar("R", bound=Request)
Out = TypeVar("Out")


@dataclass(frozen=True)
class Context:
    """What an operation works with on one instance."""

    me: str
    service: PresenceService
    directory: Directory


class Audience(NamedTuple):
    """Whom a request waits for: ``expect`` (None: unknown, wait the whole FANOUT_TIMEOUT), or
    nobody, when ``publish`` is False (nothing is published; ``scope`` is the answer's)."""

    expect: set[str] | None
    publish: bool = True
    scope: Scope = "deployment"


@dataclass(frozen=True)
class Gathered:
    """This instance's receipt and the others'. ``missing``: instances expected and not heard
    (all of them when the broker failed, ``failure``)."""

    me: str
    local: Reply
    replies: dict[str, Reply]
    missing: list[str]
    scope: Scope
    failure: Exception | None = None

    def receipts(self) -> list[Reply]:
        return [self.local, *self.replies.values()]


class Delivery(NamedTuple):
    """What a send, broadcast, room send or sign-out reached."""

    connections: int
    #: Distinct users reached.
    recipients: int
    #: Instances that delivered or answered (this one first when it took part).
    instances: list[str]
    #: Live instances that did not answer in time: their sockets may have missed the message.
    unreachable: list[str]
    scope: Scope


class Operation(Generic[R, Out]):
    """One cross-instance operation. Subclasses set ``request`` and ``here``/``merge``."""

    request: type[R]

    async def here(self, ctx: Context, request: R) -> Reply:
        """The work on one instance's sockets, and its receipt."""
        raise NotImplementedError

    def owed(self, request: R, reply: Reply, me: str) -> bool:
        """Whether another instance publishes its receipt (a send that reached nobody there
        and did not expect that instance owes none)."""
        return True

    async def audience(self, ctx: Context, request: R, local: Reply) -> Audience:
        """Whom to wait for; by default every live instance (membership and sockets live in
        each instance's memory, so none can be left out in advance)."""
        return Audience(await ctx.directory.live_instances())

    def merge(self, request: R, gathered: Gathered) -> Out:
        raise NotImplementedError
