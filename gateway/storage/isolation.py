"""A commit Firestore refuses as invalid, narrowed down to the write at fault.

Firestore refuses a whole commit for one write it cannot take (:class:`WriteRejected`, as opposed
to unavailable), so the same commit would fail the same way forever, and a buffer that retried
it forever would stop every write of the instance, heartbeats included: the sweep would then sign
out everyone the instance holds. Instead the commit is split in halves, each committed again at
once, and so on down to the write at fault, which is dropped and logged once. One bad document
therefore costs about ``2 * log2(batch_size)`` extra commits and never stalls the writes batched
beside it. The write-behind buffer (``gateway.storage.writer``) commits every chunk this way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.exceptions import WriteRejected
from gateway.storage.write_buffer import Chunk

logger = logging.getLogger("gateway.storage.writer")


async def commit_isolating(
    commit: Callable[[Chunk], Awaitable[None]],
    chunk: Chunk,
    *,
    dropped: Callable[[], None],
    failed: Callable[[Chunk], None],
) -> Exception | None:
    """Commit ``chunk``, isolating and dropping any write Firestore refuses as invalid (each
    counted by ``dropped``); a part that failed for another reason is handed to ``failed`` (to
    go back into the buffer). Returns that other error (None: everything landed or was
    dropped)."""
    try:
        await commit(chunk)
    except WriteRejected as exc:
        if len(chunk) == 1:
            (collection, doc_id), pending = chunk[0]
            dropped()
            # Once per write dropped: a client cannot make this line repeat, since the write is
            # gone (and the protocol already refuses the values that could cause it).
            logger.error(
                "dropped a write Firestore refused as invalid: %s/%.80s fields=%s: %s",
                collection,
                doc_id,
                sorted(pending.fields),
                exc,
            )
            return None
        middle = len(chunk) // 2
        first = await commit_isolating(commit, chunk[:middle], dropped=dropped, failed=failed)
        second = await commit_isolating(commit, chunk[middle:], dropped=dropped, failed=failed)
        return first or second
    except Exception as exc:
        failed(chunk)
        return exc
    return None
