"""A socket edge for unit tests: takes pre-encoded frames as ``gateway.edge.wsproto_lean`` does,
and records them."""

from __future__ import annotations


class FrameEdge:
    """Records the frames written and how often reading was resumed; always ready."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.resumed = 0

    def ready(self) -> bool:
        return True

    def write_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def resume_reading(self) -> None:
        self.resumed += 1

    def texts(self) -> list[str]:
        """The frames' texts (unmasked server frames under 126 bytes: a 2-byte header)."""
        return [f[2:].decode() for f in self.frames]
