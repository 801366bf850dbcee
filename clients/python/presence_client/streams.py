"""The client's position in its durable stream (docs/protocol.md, Durable delivery).

:class:`StreamPosition` is sans-I/O: it says which stream frames are new, what to present in the
next socket's URL and which ``stream_ack`` to send; :mod:`presence_client.durable` feeds it the
frames and sends what it says.
"""

from __future__ import annotations

import json


class StreamPosition:
    """A client's place in its durable stream: the epoch, the offset up to which every message
    was processed, and the offsets above it already seen (live messages may come out of order
    when several instances send, and during a recovery). Sans-I/O."""

    #: Offsets seen above the contiguous one; past this, the gap is given up (the message is
    #: beyond any recovery window by then).
    MAX_SEEN = 1000

    def __init__(self) -> None:
        #: None until the gateway has told the client where its stream stands.
        self.epoch: str | None = None
        self.offset = 0
        self.seen: set[int] = set()
        #: The offset last acknowledged to the gateway.
        self.acked = 0

    def params(self) -> dict[str, str]:
        """The recovery query parameters for the next socket."""
        if self.epoch is None:
            return {"recover": "true"}
        return {"recover": "true", "epoch": self.epoch, "offset": str(self.offset)}

    def accept(self, epoch: str, offset: int) -> bool:
        """Whether a stream frame is new (deliver it) or a duplicate (drop it)."""
        if self.epoch != epoch:
            if self.epoch:
                # Another epoch: the stream was started again; the recovery says so.
                return False
            self.epoch, self.offset, self.seen = epoch, 0, set()
        if offset <= self.offset or offset in self.seen:
            return False
        self.seen.add(offset)
        while self.offset + 1 in self.seen:
            self.offset += 1
            self.seen.discard(self.offset)
        if len(self.seen) > self.MAX_SEEN:
            self.offset = min(self.seen)
            self.seen = {o for o in self.seen if o > self.offset}
        return True

    def recovered(self, epoch: str, offset: int, recovered: bool) -> None:
        """After a recovery frame: its position is the client's (a not-recovered stream starts
        over there; the app refetches its state). In the same epoch the client keeps what it
        has seen (the gateway could not read the stream, or skipped past messages it lost): a
        later replay of an offset already delivered must not deliver it again."""
        if self.epoch == epoch:
            self.offset = max(self.offset, offset)
            self.seen = {o for o in self.seen if o > self.offset}
        elif not recovered or offset > self.offset:
            self.epoch, self.offset = epoch, offset
            self.seen = {o for o in self.seen if o > offset} if recovered else set()

    def ack_frame(self) -> str | None:
        """The ``stream_ack`` frame to send, or None when nothing new was processed."""
        if self.epoch is None or self.offset == self.acked:
            return None
        self.acked = self.offset
        return json.dumps(
            {"type": "stream_ack", "epoch": self.epoch, "offset": self.offset},
            separators=(",", ":"),
        )
