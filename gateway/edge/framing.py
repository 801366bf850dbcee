"""RFC 6455 server frames, encoded once: the ping round and broadcasts write the same bytes to
every socket."""

from __future__ import annotations

#: The largest payload a frame with a 7-bit length carries.
SMALL_FRAME = 125


def text_frame(text: str) -> bytes:
    """A final, unmasked text frame (what a server sends) carrying ``text``: encoded once, the
    same bytes go to every socket (``Connection.push_frame``)."""
    payload = text.encode()
    size = len(payload)
    if size <= SMALL_FRAME:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload
